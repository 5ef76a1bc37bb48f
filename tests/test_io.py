import pytest

from vqlib.io import atomic_write, sha256


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"first"))
    assert target.read_bytes() == b"first"

    def failing(tmp):
        open(tmp, "wb").write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"first"  # the old file survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]  # no temporary left behind
    assert sha256(target) == "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e"
