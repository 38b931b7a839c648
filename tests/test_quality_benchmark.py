"""benchmarks/quality_vs_trl.py's table: per-seed losses and metrics, their spread, and the verdict
on the shipped defaults against TRL's seed spread."""

from benchmarks.quality_vs_trl import layout_table


def run(loss, metric, speed, batching="b", seed=0):
    return {"held_out_loss": loss, "metric": metric, "tokens_per_second": speed, "batching": batching, "seed": seed}


BASE = {"held_out_loss": 0.7252, "metric": 0.1, "metric_name": "accuracy"}


def test_the_table_lists_every_seed_and_says_whether_ours_is_within_trls_spread():
    runs = {"trl": [run(0.4787, 0.3, 50.0, seed=42), run(0.4682, 0.4, 52.0, seed=1), run(0.4700, 0.3, 51.0, seed=2)],
            "ours": [run(0.4792, 0.3, 180.0), run(0.4695, 0.3, 170.0), run(0.4710, 0.4, 175.0)]}
    table = layout_table("typed", BASE, runs)
    assert "| trl | b | 42, 1, 2 | 0.4787, 0.4682, 0.4700 | 0.4723 (0.4682–0.4787) | 0.300, 0.400, 0.300 | 0.333 | 51.0 |" in table
    assert "| base model | | | 0.7252 | | 0.100 | | |" in table
    assert "within TRL's seed spread (0.0105); training speed 3.43x TRL's at that quality." in table


def test_a_gap_wider_than_trls_spread_is_called_outside():
    runs = {"trl": [run(0.4787, 0.3, 50.0), run(0.4682, 0.4, 52.0)],
            "ours": [run(0.5110, 0.3, 180.0), run(0.5012, 0.3, 170.0)]}
    table = layout_table("typed", BASE, runs)
    assert "held-out loss +0.0326 (+6.9%), outside TRL's seed spread (0.0105); training speed 3.43x TRL's." in table
