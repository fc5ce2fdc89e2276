"""The real-data example: finetuning recovers accuracy and applying changes nothing."""
import runpy
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "digits_end_to_end.py"


def test_digits_end_to_end(tmp_path):
    run = runpy.run_path(str(EXAMPLE))["run"]
    results = run(epochs=10, finetune_epochs=5, quiet=True, workdir=str(tmp_path))
    dense, applied = results["dense"], results["applied"]
    assert dense[0] > 90
    assert applied[0] >= dense[0] - 2, results["table"]
    assert results["identical"]
    assert results["masked, after finetune"][0] == applied[0]
    assert applied[1] < 0.5 * dense[1]
