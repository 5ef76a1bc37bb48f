import torch

# the suite runs as two pytest-xdist workers on two cores: one thread each
torch.set_num_threads(1)
