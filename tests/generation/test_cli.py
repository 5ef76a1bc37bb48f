import pytest
import torch

from vqlib.cli import main

from .conftest import tiny_generator, tiny_tokenizer


def test_sample_writes_a_grid_and_refuses_bad_classes(tmp_path, capsys):
    from PIL import Image

    torch.manual_seed(0)
    tiny_generator().save_pretrained(tmp_path / "gen")
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    out = tmp_path / "samples.png"
    args = ["sample", "--generator", str(tmp_path / "gen"), "--tokenizer", str(tmp_path / "tok"), "--cfg", "4.0", "--seed", "0"]
    main([*args, "--classes", "0,3,7", "-o", str(out)])
    with Image.open(out) as im:
        assert im.size == (3 * 32 + 2 * 2, 32)
    with pytest.raises(SystemExit) as exit:
        main([*args, "--classes", "0,12", "-o", str(tmp_path / "bad.png")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "class labels must lie in [0, 10)" in err and "Traceback" not in err
    assert not (tmp_path / "bad.png").exists()
