"""benchmarks/compare_runs.py: span means over the rows both runs scored, the mean over seeds with
its standard error, and errors that name the file or the argument."""

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import compare_runs  # noqa: E402


def _write_run(path: Path, seed: int, gains: dict[int, float], photo_offset: float = 0.0,
               input_by_photo: dict[str, float] | None = None, **args) -> Path:
    """A JSON file shaped as method_at_scale.py writes it: two photos, one gain per step."""
    rows = [{"step": step, "gain": gain - 0.3, "ema_gain": gain,
             "gain_by_photo": {"cat": gain - 0.3, "moon": gain - 0.3},
             "ema_gain_by_photo": {"cat": gain + photo_offset, "moon": gain - photo_offset}}
            for step, gain in gains.items()]
    settings = {"seed": seed, "test_data": "test64", "test_pairs": 32, "every": 250, "preset": "small", "lr": 5e-4}
    settings.update(args)
    input_by_photo = input_by_photo or {"cat": 27.4, "moon": 29.4}
    path.write_text(json.dumps({"args": settings, "warmup_steps": 250, "input_psnr": 28.4,
                                "input_psnr_by_photo": input_by_photo, "rows": rows}))
    return path


def test_spans_seeds_and_thresholds(tmp_path, capsys):
    # Seed 0: A is 0.1 above B at every step; seed 1: 0.3 above. B skips step 750, so the span
    # 500-1000 averages A over 500 and 1000 only (the rows both scored).
    a0 = _write_run(tmp_path / "a0.json", 0, {500: 1.0, 750: 9.0, 1000: 1.6}, photo_offset=0.2)
    b0 = _write_run(tmp_path / "b0.json", 0, {500: 0.9, 1000: 1.5})
    a1 = _write_run(tmp_path / "a1.json", 1, {500: 1.3, 750: 1.3, 1000: 1.3})
    b1 = _write_run(tmp_path / "b1.json", 1, {500: 1.0, 750: 1.0, 1000: 1.0})
    report = tmp_path / "report.json"
    assert compare_runs.main(["--a", str(a0), str(a1), "--b", str(b0), str(b1), "--spans", "500-750,1000-1000",
                              "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(report.read_text())
    seed0, seed1 = result["pairs"]
    assert seed0["spans"][0]["rows"] == 1 and seed0["spans"][0]["a"] == pytest.approx(1.0)
    assert [span["difference"] for span in seed0["spans"]] == pytest.approx([0.1, 0.1])
    assert [span["difference"] for span in seed1["spans"]] == pytest.approx([0.3, 0.3])
    # By photo: A's cat is 0.2 above its mean and its moon 0.2 below, B's photos are at its mean.
    assert seed0["spans"][1]["difference_by_photo"] == pytest.approx({"cat": 0.3, "moon": -0.1})
    assert seed0["rows_a_above"] == 2 and seed0["rows_compared"] == 2
    assert seed0["row_difference_range"] == pytest.approx([0.1, 0.1])
    assert seed0["first_at_threshold_a"] == 750 and seed0["first_at_threshold_b"] == 1000
    assert seed1["first_at_threshold_a"] is None and seed1["best_a"] == pytest.approx(1.3)
    mean, error = result["summary"][0]["mean_difference"], result["summary"][0]["standard_error"]
    assert mean == pytest.approx(0.2)
    assert error == pytest.approx(math.sqrt(((0.1 - 0.2) ** 2 + (0.3 - 0.2) ** 2) / 1) / math.sqrt(2))
    assert result["summary"][0]["pairs_a_ahead"] == 2
    assert "+0.200 ± 0.100" in printed and "not by 1000 (+1.30)" in printed and "2/2 (+0.10..+0.10)" in printed
    # The weights instead of their average: every gain 0.3 lower in both runs, the same differences.
    assert compare_runs.main(["--a", str(a0), "--b", str(b0), "--score", "gain", "--spans", "500-1000",
                              "--json", str(report)]) == 0
    assert json.loads(report.read_text())["pairs"][0]["spans"][0]["difference"] == pytest.approx(0.1)


def test_the_same_test_pairs_made_again_in_another_folder_compare(tmp_path):
    # Scratch folders do not survive the machine; a test set made again by the same `jdrl synth`
    # command elsewhere scores the same input, and its runs compare with the earlier ones.
    a = _write_run(tmp_path / "a.json", 0, {500: 1.1}, test_data="/work/s33/test64")
    b = _write_run(tmp_path / "b.json", 0, {500: 1.0}, test_data="/work/s35/test64")
    report = tmp_path / "report.json"
    assert compare_runs.main(["--a", str(a), "--b", str(b), "--spans", "500-500", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["pairs"][0]["spans"][0]["difference"] == pytest.approx(0.1)


def test_bad_input_names_the_file_or_argument(tmp_path, capsys):
    a = _write_run(tmp_path / "a.json", 0, {500: 1.0})
    other_seed = _write_run(tmp_path / "b.json", 1, {500: 1.0})
    other_data = _write_run(tmp_path / "c.json", 0, {500: 1.0}, test_pairs=64)
    later = _write_run(tmp_path / "d.json", 0, {5000: 1.0})
    # The same mean input score from other photos' scores: other test pairs.
    other_photos = _write_run(tmp_path / "e.json", 0, {500: 1.0}, input_by_photo={"cat": 27.5, "moon": 29.3})
    (tmp_path / "empty.json").write_text(json.dumps({"args": {}, "rows": []}))
    (tmp_path / "broken.json").write_text("{")
    no_average = json.loads(a.read_text())
    no_average["rows"][0]["ema_gain"] = None  # a run without train.ema_decay
    (tmp_path / "no_average.json").write_text(json.dumps(no_average))

    def error(*argv):
        assert compare_runs.main(list(argv)) == 2
        return capsys.readouterr().err

    assert "missing.json: no such file" in error("--a", str(tmp_path / "missing.json"), "--b", str(a))
    assert "broken.json: not a JSON file" in error("--a", str(tmp_path / "broken.json"), "--b", str(a))
    assert "empty.json: holds no rows" in error("--a", str(tmp_path / "empty.json"), "--b", str(a))
    assert "use --score gain" in error("--a", str(tmp_path / "no_average.json"), "--b", str(a))
    assert "differ in seed" in error("--a", str(a), "--b", str(other_seed))
    assert "differ in test_pairs" in error("--a", str(a), "--b", str(other_data))
    assert "scored different inputs of cat" in error("--a", str(a), "--b", str(other_photos))
    assert "share no scored step" in error("--a", str(a), "--b", str(later))
    assert "no step in 600-700" in error("--a", str(a), "--b", str(a), "--spans", "500-500,600-700")
    assert "--spans: '7-1' ends before it starts" in error("--a", str(a), "--b", str(a), "--spans", "7-1")
    assert "--spans: 'x' is not FIRST-LAST" in error("--a", str(a), "--b", str(a), "--spans", "x")
    assert "--a has 2 runs and --b 1" in error("--a", str(a), str(a), "--b", str(a))


def test_the_recorded_runs_compare_as_results_reports(tmp_path):
    """benchmarks/records/ holds the runs behind RESULTS' "Ours and #4 with the bicubic warp to 8000
    steps": compared seed with seed over its three spans, they give the numbers quoted there."""
    records = REPO / "benchmarks" / "records"
    report = tmp_path / "report.json"

    def runs(name, *seeds):
        return [str(records / f"{name}_S{seed}.json") for seed in seeds]

    def compare(a, b, spans="1750-3000,3250-5500,5750-8000"):
        """compare_runs.py --a A --b B --spans SPANS, and its --json report."""
        assert compare_runs.main(["--a", *a, "--b", *b, "--spans", spans, "--json", str(report)]) == 0
        return json.loads(report.read_text())

    result = compare(runs("oldR_bicubic", 2, 3), runs("no_reb_IB_bicubic", 2, 3))
    means = [round(span["mean_difference"], 3) for span in result["summary"]]
    assert means == [-0.123, -0.128, -0.223]
    assert [span["pairs_a_ahead"] for span in result["summary"]] == [0, 0, 0]
    seed2, seed3 = result["pairs"]
    assert [round(span["a"], 2) for span in seed2["spans"]] == [0.95, 1.15, 1.41]
    assert [round(span["a"], 2) for span in seed3["spans"]] == [0.95, 1.04, 1.10]
    assert (seed2["first_at_threshold_a"], seed3["first_at_threshold_a"]) == (None, None)
    assert (seed2["first_at_threshold_b"], seed3["first_at_threshold_b"]) == (6500, 8000)
    assert (round(seed2["best_b"], 2), round(seed3["best_b"], 2)) == (1.64, 1.51)
    # Eq. 1 (ours without L_P) against the same #4': ahead at every row to 8000 steps, +0.07, +0.10,
    # +0.07, and past +1.5 dB first.
    result = compare(runs("eq1_bicubic", 2, 3), runs("no_reb_IB_bicubic", 2, 3))
    assert [round(span["mean_difference"], 3) for span in result["summary"]] == [0.070, 0.101, 0.072]
    assert [pair["rows_a_above"] for pair in result["pairs"]] == [26, 26]
    seed2, seed3 = result["pairs"]
    assert (seed2["first_at_threshold_a"], seed3["first_at_threshold_a"]) == (6000, 7750)
    assert (round(seed2["best_a"], 2), round(seed3["best_a"], 2)) == (1.78, 1.54)
    # Ours with L_P only on textured pixels, and with beta 0.1, against ours (seed 2, to 4500 steps;
    # the masked run stopped there).
    for record, means, rows in (("pmask_texture_bicubic", [0.04, 0.02], 12),
                                ("beta01_bicubic", [0.13, 0.16], 26)):
        result = compare(runs(record, 2), runs("oldR_bicubic", 2), spans="1750-3000,3250-4500")
        assert [round(span["mean_difference"], 2) for span in result["summary"]] == means, record
        assert result["pairs"][0]["rows_a_above"] == rows, record
    # Ours with beta 0.1 to 8000 steps, seeds 2 and 3: against #4' level early, ahead late, at 44 of
    # 52 rows; against Eq. 1 behind early, level late; against ours (beta 0.5) ahead at every row.
    for other, means, rows in (("no_reb_IB_bicubic", [-0.006, 0.069, 0.093], [25, 19]),
                               ("eq1_bicubic", [-0.077, -0.033, 0.021], [14, 7]),
                               ("oldR_bicubic", [0.116, 0.197, 0.316], [26, 26])):
        result = compare(runs("beta01_bicubic", 2, 3), runs(other, 2, 3))
        assert [round(span["mean_difference"], 3) for span in result["summary"]] == means, other
        assert [pair["rows_a_above"] for pair in result["pairs"]] == rows, other
    seed2, seed3 = result["pairs"]
    assert (seed2["first_at_threshold_a"], seed3["first_at_threshold_a"]) == (6000, 7750)
    assert (round(seed2["best_a"], 2), round(seed3["best_a"], 2)) == (1.79, 1.52)
    # A third seed, both to 8000 steps: beta 0.1 ahead early at 1 of 3 seeds, late at all three.
    result = compare(runs("beta01_bicubic", 2, 3, 4), runs("no_reb_IB_bicubic", 2, 3, 4))
    assert [round(span["mean_difference"], 3) for span in result["summary"]] == [-0.057, 0.014, 0.106]
    assert [span["pairs_a_ahead"] for span in result["summary"]] == [1, 2, 3]
    seed4 = result["pairs"][2]
    assert [round(span["a"] - span["b"], 2) for span in seed4["spans"]] == [-0.16, -0.09, 0.13]
    assert (seed4["rows_a_above"], seed4["rows_compared"]) == (10, 26)
    assert (round(seed4["best_a"], 2), round(seed4["best_b"], 2)) == (1.46, 1.29)
    assert (seed4["first_at_threshold_a"], seed4["first_at_threshold_b"]) == (None, None)
    # Seed 4 of Eq. 1 and of ours (beta 0.5): Eq. 1 ahead of #4' at every row of all three seeds, and
    # past +1.5 dB at all three; both L_P weights behind #4' early at seed 4, where Eq. 1 is not.
    result = compare(runs("eq1_bicubic", 2, 3, 4), runs("no_reb_IB_bicubic", 2, 3, 4))
    assert [round(span["mean_difference"], 3) for span in result["summary"]] == [0.064, 0.105, 0.125]
    assert [pair["rows_a_above"] for pair in result["pairs"]] == [26, 26, 26]
    assert [pair["first_at_threshold_a"] for pair in result["pairs"]] == [6000, 7750, 7250]
    seed4_eq1 = result["pairs"][2]
    result = compare(runs("oldR_bicubic", 2, 3, 4), runs("no_reb_IB_bicubic", 2, 3, 4))
    assert [round(span["mean_difference"], 3) for span in result["summary"]] == [-0.131, -0.096, -0.121]
    seed4_ours = result["pairs"][2]
    assert [round(span["a"] - span["b"], 2) for span in seed4_eq1["spans"]] == [0.05, 0.11, 0.23]
    assert [round(span["a"] - span["b"], 2) for span in seed4_ours["spans"]] == [-0.15, -0.03, 0.08]
    assert (seed4_ours["rows_a_above"], round(seed4_ours["best_a"], 2)) == (14, 1.36)
    # beta 0.25, seeds 2 and 3: level with #4' to 5500 steps and split late (seed 3's moon), below
    # Eq. 1 at every row, level with beta 0.1 early and behind it late, ahead of 0.5 at every row.
    for other, means, ahead, rows in (("no_reb_IB_bicubic", [-0.003, 0.002, -0.038], [0, 1, 1], [23, 5]),
                                      ("eq1_bicubic", [-0.074, -0.099, -0.110], [0, 0, 0], [0, 0]),
                                      ("beta01_bicubic", [0.003, -0.067, -0.131], [1, 0, 0], [2, 6]),
                                      ("oldR_bicubic", [0.119, 0.130, 0.185], [2, 2, 2], [26, 26])):
        result = compare(runs("beta025_bicubic", 2, 3), runs(other, 2, 3))
        assert [round(span["mean_difference"], 3) for span in result["summary"]] == means, other
        assert [span["pairs_a_ahead"] for span in result["summary"]] == ahead, other
        assert [pair["rows_a_above"] for pair in result["pairs"]] == rows, other
        if other == "no_reb_IB_bicubic":  # late, the seeds split on the moon
            assert [round(pair["spans"][2]["difference_by_photo"]["moon"], 2) for pair in result["pairs"]] == [-0.06, -0.74]
    # beta 0.25's own (the A side of every comparison above)
    assert [(pair["first_at_threshold_a"], round(pair["best_a"], 2)) for pair in result["pairs"]] == [(6250, 1.67), (None, 1.39)]
