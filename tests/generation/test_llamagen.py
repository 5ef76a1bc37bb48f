import pytest
import torch

from vqlib.generation import LlamaGen, tokenizer_factors

from .conftest import tiny_generator, tiny_tokenizer


@pytest.mark.parametrize("name, millions", [("B", 111), ("L", 343), ("XL", 775)])
def test_presets_have_the_papers_sizes(name, millions):
    # LlamaGen's GPT-B/L/XL: 16384-code tokenizer, 16x16 grid, 1000 classes
    with torch.device("meta"):
        g = LlamaGen.preset(name, 16384, grid_size=16, num_classes=1000)
    assert abs(sum(p.numel() for p in g.parameters()) / 1e6 - millions) < 0.01 * millions


def test_digits_round_trip_and_factorised_vocabulary():
    tok = tiny_tokenizer()
    assert tokenizer_factors(tok.quantizer) == [5, 5, 5]
    assert tokenizer_factors(tok.quantizer, factorize=False) == [125]
    g = LlamaGen.for_tokenizer(tok, "tiny", grid_size=8, num_classes=10)
    assert len(g.tok_embeddings) == 3 and [h.out_features for h in g.output] == [5, 5, 5]
    idx = torch.randint(0, 125, (3, 8, 8))
    digits = g.to_digits(idx)
    assert digits.shape == (3, 64, 3) and int(digits.max()) < 5
    assert torch.equal(g.from_digits(digits), idx)
    # the digits are FSQ's own: decoding each digit's level gives the same code vector
    assert torch.equal(digits[..., 0], idx.flatten(1) % 5)
    two = LlamaGen(64, num_codebooks=2, factors=[8, 8, 4, 16], grid_size=4, num_classes=2, dim=16, depth=1, heads=1, multiple_of=8)
    idx2 = torch.randint(0, 64, (2, 4, 4, 2))
    assert torch.equal(two.from_digits(two.to_digits(idx2)), idx2)


def test_factors_must_multiply_to_the_codebook():
    with pytest.raises(ValueError, match="multiply to 100, not codebook_size 125"):
        LlamaGen(125, factors=[10, 10], grid_size=4, dim=16, depth=1, heads=1)


def train_steps(g, tokens, labels, steps, lr=3e-3):
    opt = torch.optim.AdamW(g.parameters(), lr=lr)
    g.train()
    digits = g.to_digits(tokens)
    losses = []
    for _ in range(steps):
        loss = g.loss(g(digits, labels), digits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_loss_decreases_on_class_dependent_tokens():
    torch.manual_seed(0)
    g = tiny_generator(repa_dim=None)
    labels = torch.arange(8) % 4
    base = torch.randint(0, 125, (4, 8, 8))
    tokens = base[labels]  # each class has its own token map
    losses = train_steps(g, tokens, labels, 40)
    # start: three uniform 5-way factors, 3·ln 5 = 4.83
    assert abs(losses[0] - 3 * torch.log(torch.tensor(5.0))) < 1e-3
    assert losses[-1] < 0.6 * losses[0]


def test_kv_cache_equals_full_recomputation(generator):
    labels = torch.tensor([0, 3, 7])
    for kwargs in (dict(), dict(cfg_scale=3.0, top_k=3, temperature=0.8), dict(top_p=0.7)):
        a, la = generator.sample(labels, seed=5, return_logits=True, **kwargs)
        b, lb = generator.sample(labels, seed=5, use_cache=False, return_logits=True, **kwargs)
        assert torch.equal(a, b), kwargs
        for step_a, step_b in zip(la, lb):
            for x, y in zip(step_a, step_b):
                torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_kv_cache_logits_equal_teacher_forcing(generator):
    labels = torch.tensor([1, 2])
    idx, logits = generator.sample(labels, seed=0, return_logits=True)
    forced = generator(generator.to_digits(idx), labels)
    for i, step in enumerate(logits):
        for j, lg in enumerate(step):
            torch.testing.assert_close(lg, forced[j][:, i], atol=1e-4, rtol=1e-4)


def test_cfg_scale_one_is_the_conditional_branch(generator):
    labels = torch.tensor([0, 5, 9, 9])
    a, la = generator.sample(labels, cfg_scale=1.0, seed=2, return_logits=True)
    b, lb = generator.sample(labels, cfg_scale=None, seed=2, return_logits=True)
    assert torch.equal(a, b)
    for step_a, step_b in zip(la, lb):
        for x, y in zip(step_a, step_b):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    # and a larger scale does change the distribution
    c, lc = generator.sample(labels, cfg_scale=4.0, seed=2, return_logits=True)
    assert not torch.allclose(lc[0][0], lb[0][0])


def test_top_k_one_is_greedy_and_seeds_repeat(generator):
    labels = torch.tensor([4, 4])
    idx, logits = generator.sample(labels, top_k=1, seed=0, return_logits=True)
    digits = generator.to_digits(idx)
    for i, step in enumerate(logits):
        for j, lg in enumerate(step):
            assert torch.equal(digits[:, i, j], lg.argmax(-1))
    assert torch.equal(generator.sample(labels, seed=3), generator.sample(labels, seed=3))
    assert not torch.equal(generator.sample(labels, seed=3), generator.sample(labels, seed=4))


def test_repa_gradient_reaches_the_chosen_layer_and_not_later_ones():
    torch.manual_seed(0)
    g = LlamaGen.preset("tiny", 125, factors=[5, 5, 5], grid_size=8, num_classes=10, depth=6, repa_dim=12)
    assert g.repa_layer == 2  # ⌊6/3⌋
    digits = g.to_digits(torch.randint(0, 125, (2, 8, 8)))
    _, projected = g(digits, torch.tensor([1, 2]), repa=True)
    (-torch.nn.functional.cosine_similarity(projected, torch.randn_like(projected), dim=-1).mean()).backward()
    for i, layer in enumerate(g.layers):
        grads = [p.grad for p in layer.parameters()]
        if i < g.repa_layer:
            assert all(gr is not None and gr.abs().sum() > 0 for gr in grads), f"block {i + 1} got no REPA gradient"
        else:
            assert all(gr is None for gr in grads), f"block {i + 1} (after repa_layer) got a REPA gradient"
    assert all(h.weight.grad is None for h in g.output) and g.norm.weight.grad is None
    assert g.class_embedding.weight.grad.abs().sum() > 0


def test_state_i_predicts_token_i_and_does_not_see_it():
    torch.manual_seed(0)
    g = tiny_generator().eval()
    labels = torch.tensor([3])
    idx = torch.randint(0, 125, (1, 8, 8))
    digits = g.to_digits(idx)
    logits, proj = g(digits, labels, repa=True)
    i = 20
    changed = digits.clone()
    changed[0, i] = (changed[0, i] + 1) % 5
    logits2, proj2 = g(changed, labels, repa=True)
    # position i's state (the one aligned with token i's patch, and predicting token i) is blind to token i ...
    torch.testing.assert_close(proj[:, : i + 1], proj2[:, : i + 1])
    torch.testing.assert_close(logits[0][:, : i + 1], logits2[0][:, : i + 1])
    # ... and position i + 1 sees it
    assert not torch.allclose(proj[:, i + 1], proj2[:, i + 1])
    # position 0 is the class token: it predicts token 0 from the class alone
    assert not torch.allclose(g(digits, torch.tensor([4]), repa=True)[1][:, 0], proj[:, 0])


def test_save_pretrained_round_trip(tmp_path, generator):
    generator.save_pretrained(tmp_path / "g")
    loaded = LlamaGen.from_pretrained(tmp_path / "g")
    assert loaded.config == generator.config
    labels = torch.tensor([1, 8])
    assert torch.equal(loaded.sample(labels, cfg_scale=2.0, seed=0), generator.sample(labels, cfg_scale=2.0, seed=0))


def test_generate_decodes_through_the_tokenizer(generator):
    tok = tiny_tokenizer().eval()
    idx, images = generator.generate([0, 1], cfg_scale=2.0, tokenizer=tok, seed=0)
    assert idx.shape == (2, 8, 8) and images.shape == (2, 3, 32, 32)
    torch.testing.assert_close(images, tok.decode(idx).clamp(-1, 1))


def test_bad_input_is_a_clear_error(generator):
    with pytest.raises(ValueError, match="tokenizer's codebook .* is not this generator's vocabulary"):
        generator.generate([0], tokenizer=tiny_tokenizer("vq"))
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 10\)"):
        generator.sample([3, 10])
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 10\)"):
        generator.sample([-1])
    no_dropout = tiny_generator(class_dropout=0.0)
    no_dropout.sample([1], seed=0)  # conditional sampling works
    with pytest.raises(ValueError, match="without class dropout.*cfg_scale=None"):
        no_dropout.sample([1], cfg_scale=4.0)
    with pytest.raises(ValueError, match="expected token indices"):
        generator.to_digits(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no REPA projector"):
        tiny_generator(repa_dim=None)(torch.zeros(1, 64, 3, dtype=torch.long), torch.tensor([0]), repa=True)
