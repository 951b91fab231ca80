"""``kproc bench`` (SPEC §6, §7): parsing, the report's tables and targets,
``compare``, histogram files, and the suite run from outside a checkout.
No timing is asserted: the figures belong to the benchmarks themselves."""

import io
import json
import math
import os
import subprocess
import sys

import pytest

import kproc
from kproc._bench import deps
from kproc._bench import hist as H
from kproc._bench import targets as T
from kproc._bench.create import scale_count
from kproc._bench.harness import CaseError, Run
from kproc._bench.report import HIGHER, LOWER, Table, format_table, row_stats, table_json
from kproc._cli.main import build_parser

pytest.importorskip("hdrh")
pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kproc.__file__)))


def _dist_table(shift=0, n=2000):
    t = Table("pingpong", "Ping-pong", LOWER, "kproc")
    t.rows = [Run.dist("kproc", "kproc", [1000 + shift + (i % 100) for i in range(n)]),
              Run.dist("raw", "raw semaphores", [2000 + shift + (i % 100) for i in range(n)]),
              Run.dist("part", "a part of raw", [500] * 10, sub=True),
              Run.missing("floor", "C floor", "not built")]
    return t


def _run_json(tables):
    return {"format": "kproc-bench", "version": 1, "meta": {"date": "2026-12-01"},
            "tables": [table_json(t) for t in tables], "targets": []}


# -- parsing ---------------------------------------------------------------------------

def test_bench_parses_its_options_and_compare():
    parser = build_parser()
    args = parser.parse_args(["bench", "--quick", "--only", "pingpong", "--only", "hotplug",
                              "--json", "a.json", "--histogram", "h", "--png", "p.png"])
    assert (args.quick, args.only, args.json, args.histogram, args.png) == \
        (True, ["pingpong", "hotplug"], "a.json", "h", "p.png")
    assert args.bench_command is None and callable(args.func)
    assert parser.parse_args(["bench", "--skip", "hotplug"]).skip == ["hotplug"]
    args = parser.parse_args(["bench", "compare", "A.json", "B.json"])
    assert (args.bench_command, args.a, args.b) == ("compare", "A.json", "B.json")


def test_bench_refuses_an_unknown_suite(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "--only", "nosuch"])
    assert exc.value.code == 2 and "nosuch" in capsys.readouterr().err


def test_bench_says_what_to_install_without_the_extra(monkeypatch, capsys):
    real = deps.importlib.util.find_spec
    monkeypatch.setattr(deps.importlib.util, "find_spec",
                        lambda name: None if name == "hdrh" else real(name))
    from kproc._bench.suite import run_suite
    assert run_suite(quick=True, only=["pingpong"]) == 2
    err = capsys.readouterr().err
    assert "hdrhistogram" in err and "pip install 'kproc[bench]'" in err


# -- the report --------------------------------------------------------------------------

def test_distribution_table_says_what_is_better_and_ratios_only_like_rows():
    text = format_table(_dist_table())
    lines = text.splitlines()
    assert lines[0] == "Ping-pong"
    assert "lower is better" in lines[1] and "ratio = row p50 ÷ kproc p50" in lines[1]
    header = lines[2].split()
    assert header == ["n", "p50", "p90", "p99", "p99.9", "max", "ratio"]
    kproc_line = next(ln for ln in lines if ln.strip().startswith("kproc "))
    raw_line = next(ln for ln in lines if "raw semaphores" in ln)
    part_line = next(ln for ln in lines if "a part of raw" in ln)
    assert kproc_line.rstrip().endswith("1.00×") and raw_line.rstrip().endswith("×")
    assert "×" not in part_line                      # a sub-row gets no ratio
    assert part_line.startswith("    a part")         # and is indented
    assert "missing: not built" in text


def test_scalar_table_ratio_is_row_over_the_kproc_row():
    t = Table("throughput", "Throughput", HIGHER, "kproc", columns=[("per_s", "works/s")])
    t.rows = [Run.scalar("kproc", "kproc", {"per_s": 1000.0}),
              Run.scalar("ppe", "ProcessPoolExecutor", {"per_s": 250.0})]
    text = format_table(t)
    assert "higher is better; ratio = row ÷ kproc" in text
    assert "ratio: ProcessPoolExecutor" in text and "0.25×" in text


def test_targets_print_pass_miss_and_not_run():
    stats = row_stats([_dist_table()])
    targets = (T.Target(1, "kproc ≤ 0.6× raw", "pingpong/kproc", "p50", "ratio<=", 0.6,
                        "pingpong/raw"),
               T.Target(2, "kproc ≤ 0.1× raw", "pingpong/kproc", "p50", "ratio<=", 0.1,
                        "pingpong/raw"),
               T.Target(3, "kproc ≤ raw + 2 µs", "pingpong/kproc", "p50", "plus<=", 2000,
                        "pingpong/raw", "µs", 1e3),
               T.Target(4, "floor ≤ 1 µs", "pingpong/floor", "p50", "<=", 1000, unit="µs",
                        scale=1e3),
               T.Target(5, "other suite", "create/kproc", "p50", "<=", 1))
    verdicts = T.evaluate(stats, targets)
    assert [v.result for v in verdicts] == ["PASS", "MISS", "PASS", "NOT RUN", "NOT RUN"]
    text = T.format_verdicts(verdicts, {"pingpong"})
    assert "PASS    #1   kproc ≤ 0.6× raw: 0.512× (limit 0.6×)" in text
    assert "MISS    #2" in text and "NOT RUN #4" in text
    assert "#5" not in text and "1 more belong to suites not run" in text


def test_every_target_names_a_known_kind_and_a_table_of_the_suite():
    known = {"pingpong", "create", "sustained", "scale", "scale_one", "dispatch", "dispatch_rt",
             "throughput", "lateness_other", "lateness_fifo", "hotplug_down", "hotplug_up",
             "external_down", "external_up", "pool_rt", "pool_map"}
    for t in T.TARGETS:
        assert t.kind in {"ratio<=", "within", "plus<=", "<=", ">="}
        assert t.row.split("/")[0] in known and (t.ref is None or t.ref.split("/")[0] in known)
    assert all(v.result == "NOT RUN" for v in T.evaluate({}))


# -- compare -------------------------------------------------------------------------------

def test_compare_two_runs_judges_noise(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run_json([_dist_table(0)])))
    b.write_text(json.dumps(_run_json([_dist_table(500)])))
    from kproc._cli.main import main
    assert main(["bench", "compare", str(a), str(a)]) == 0
    same = capsys.readouterr().out
    assert "ratio = B ÷ A" in same and "lower is better" in same
    assert "within noise" in same and "beyond noise" not in same
    assert main(["bench", "compare", str(a), str(b)]) == 0
    shifted = capsys.readouterr().out
    kproc_line = next(ln for ln in shifted.splitlines() if ln.strip().startswith("kproc "))
    assert "1.5" in kproc_line and "beyond noise: B worse" in kproc_line
    assert main(["bench", "compare", str(b), str(a), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    row = data["tables"][0]["rows"][0]
    assert row["key"] == "kproc" and row["ratio"] < 1 and "B better" in row["verdict"]


def test_compare_refuses_a_file_that_is_no_bench_run(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    from kproc._cli.main import main
    assert main(["bench", "compare", str(bad), str(bad)]) == 2
    assert "not a `kproc bench --json` file" in capsys.readouterr().err


def test_median_interval_narrows_with_more_samples():
    small, _ = H.from_samples(range(100))
    big, _ = H.from_samples(list(range(100)) * 100)
    lo_s, hi_s = H.median_interval(small)
    lo_b, hi_b = H.median_interval(big)
    assert lo_s <= lo_b <= 50 <= hi_b <= hi_s
    assert math.isnan(H.median_interval(H.new())[0])


# -- histogram files and JSON ------------------------------------------------------------------

def test_histogram_files_are_cyclictest_style(tmp_path):
    run = Run(quick=True, out=io.StringIO())
    run.tables.append(_dist_table())
    paths = run.write_histograms(str(tmp_path / "h"))
    assert sorted(os.path.basename(p) for p in paths) == \
        ["pingpong.kproc.hist", "pingpong.part.hist", "pingpong.raw.hist"]
    lines = (tmp_path / "h" / "pingpong.kproc.hist").read_text().splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    assert body[0] == "000001 002000"            # 1,000-1,099 ns: the 1 µs bucket
    assert "# Total: 000002000" in lines and "# Max Latencies: 00001" in lines
    assert "lower is better" in lines[0]


def test_samples_out_of_range_are_counted_not_recorded():
    row = Run.dist("x", "x", [5, -3, 7])
    assert row.dropped == 1 and row.stats()["n"] == 2
    assert "1 samples out of range" in format_table(Table("t", "T", LOWER, "x", rows=[row]))


def test_scale_count_checks_free_memory():
    assert scale_count(True, 64 << 30) == (512, "")
    assert scale_count(False, 64 << 30) == (4096, "")
    count, note = scale_count(False, 8 << 30)
    assert count < 4096 and "cut from 4,096" in note
    assert scale_count(True, 100 << 20)[0] == 0


# -- the suite, from outside the checkout ---------------------------------------------------

def test_bench_runs_from_any_directory_with_json_metadata(tmp_path):
    """The suite is shipped in the package: a run from a folder that is not
    the checkout writes its JSON (histograms and metadata) and its files."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "kproc", "bench", "--quick", "--only",
                          "pingpong", "--json", "run.json", "--histogram", "h"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert "lower is better" in out.stdout and "Targets" in out.stdout
    assert "posix backend ping-pong" in out.stdout
    data = json.loads((tmp_path / "run.json").read_text())
    meta = data["meta"]
    for key in ("kernel", "cpu_model", "cpu_count", "kproc_version", "kproc_commit",
                "backend", "spin_us", "timer_spin_us", "pinning", "date"):
        assert key in meta, key
    table = data["tables"][0]
    assert table["key"] == "pingpong" and table["better"] == "lower"
    futex = next(r for r in table["rows"] if r["key"] == "kproc_futex")
    assert H.decode(futex["hist"]).get_total_count() == futex["stats_ns"]["n"] > 0
    assert (tmp_path / "h" / "pingpong.kproc_futex.hist").exists()
    assert any(t["result"] in ("PASS", "MISS") for t in data["targets"])


def test_png_panels_say_what_is_better_and_where(tmp_path):
    pytest.importorskip("matplotlib")
    from kproc._bench.plot import make_figure, write_png
    fig = make_figure([_dist_table()], "Test CPU, 2 CPUs")
    title = fig.axes[0].get_title()
    assert "Ping-pong" in title and "lower is better" in title and "Test CPU, 2 CPUs" in title
    path = tmp_path / "run.png"
    assert write_png([_dist_table()], str(path), "Test CPU, 2 CPUs")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scalar = Table("s", "S", LOWER, "k", columns=[("v", "v")])
    assert not write_png([scalar], str(tmp_path / "none.png"), "m")


def test_a_failed_case_is_reported_and_the_other_suites_still_run(monkeypatch, capsys,
                                                                  tmp_path):
    from kproc._bench import suite as S

    def broken(run):
        run.case("no_such_case", 1)

    def fine(run):
        run.add(_dist_table())
    monkeypatch.setattr(S, "FAMILIES", {"pingpong": broken, "cycle": fine})
    out = tmp_path / "run.json"
    assert S.run_suite(quick=True, json_path=str(out)) == 1
    captured = capsys.readouterr()
    assert "suite pingpong: benchmark case no_such_case failed" in captured.err
    assert "Ping-pong" in captured.out and "Targets" in captured.out
    data = json.loads(out.read_text())          # strict JSON: no NaN
    assert [t["key"] for t in data["tables"]] == ["pingpong"]


def test_a_case_past_its_timeout_is_ended_cleanly():
    """The watchdog interrupts the case (SIGINT), so its runtime shuts down."""
    run = Run(quick=True, out=io.StringIO())
    with pytest.raises(CaseError, match="took over 2 s"):
        run.case("pingpong_kproc_futex", 10**8, timeout=2)


@pytest.mark.timeout(90)
def test_park_suite_measures_park_and_resume_beside_sigstop():
    """SPEC §7's park/unpark round trip: both rows and their halves hold every
    round.  The kthread's park ends in kthread_parkme() (kthread.c 6.15
    ``kthread_parkme``/``kthread_park``: it completes ``parked`` itself), so a
    round only ends when the kthread ran again after its unpark."""
    from kproc._bench import parking
    run = Run(quick=True, out=io.StringIO())
    parking.suite(run)
    table = run.tables[-1]
    keys = [r.key for r in table.rows]
    assert keys == ["kproc", "kproc_park", "kproc_resume",
                    "signals", "signals_park", "signals_resume"]
    for row in table.rows:
        assert row.stats()["n"] == 2000, row.key
    assert "SIGSTOP" in run.out.getvalue()
