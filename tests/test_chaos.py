"""The chaos test, a few rounds (`python -m tests.chaos --rounds 50` runs many by hand)."""

import pytest

import chaos

pytestmark = pytest.mark.slow  # processes killed at random moments


def test_a_few_chaos_rounds_keep_every_invariant(tmp_path, capsys):
    code = chaos.main(["--rounds", "3", "--seed", "1", "--folder", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 of 3 rounds kept every invariant" in out
