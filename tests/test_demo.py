"""`tokencache demo --quick` end to end on the shipped model: table, PNG grid and JSON."""
import json

from tokencache.cli import main


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "PSNR" in printed
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["fallback_reason"] is None
    assert result["flop_speedup"] > 1.5                      # toca r=0.25 N=3 on 20 steps
    assert 15 < result["psnr_db"] < 80 and 0.5 < result["ssim"] <= 1.0
    assert 0 <= result["class_accuracy"]["tokencache"] <= 1
    png = (tmp_path / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_bad_ratio(capsys):
    import pytest
    with pytest.raises(SystemExit):
        main(["demo", "--ratio", "1.5"])
    assert "'ratio' must be a number in (0, 1], got 1.5" in capsys.readouterr().err


def test_demo_reports_the_options_its_policy_reads(tmp_path, capsys):
    """The header and demo.json name the options the cached run's policy reads (dato: its prune
    options, not toca's ratio)."""
    import json

    assert main(["demo", "--quick", "--policy", "dato", "--prune-ratio", "0.2", "--steps", "4", "--samples", "2",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tokencache policy=dato prune_ratio=0.2" in out and "ratio=0.25" not in out
    assert json.loads((tmp_path / "demo.json").read_text())["options"] == {"policy": "dato", "prune_ratio": 0.2}
