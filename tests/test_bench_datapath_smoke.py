"""benchmarks/bench_datapath.py runs end to end with tiny settings (its plumbing, not its numbers).

The figures themselves come from `make bench` on an idle machine; here the script must
build its stores, read them through the real DataLoader (in process, 1 and 2 workers),
decode the FLAC baseline, ingest a PANNs pack, time the on-device stages and print
every ratio line with the command that reproduces it.
"""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--clips", "64", "--loader-batches", "1", "--flac-batches", "1", "--repeats", "1", "--step-repeats", "1", "--model", "convnext_atto_dcls_audio"]


def test_bench_datapath_prints_every_section_and_ratio():
    res = subprocess.run([sys.executable, "benchmarks/bench_datapath.py", *TINY], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for row in ("waveform store", "log-mel store", "FLAC, decoded on the fly", "FLAC, decoded + front end per clip"):
        rates = re.search(rf"^{re.escape(row)}\s+(\d+)\s+(\d+)\s+(\d+)\s*$", out, re.M)
        assert rates and all(int(r) > 0 for r in rates.groups()), f"no rates for {row!r}:\n{out}"
    assert re.search(r"^# waveform store / FLAC decoding = \d+x \(in process\)", out, re.M)
    assert re.search(r"^#   waveform store: copy into a fresh shared batch\s+[\d.]+ ms a batch", out, re.M)
    assert re.search(r"PANNs pack -> waveform store \(copy\) \d+ clips/s, FLAC -> waveform store \(decode\) \d+ clips/s; copy / decode = [\d.]+x", out)
    assert re.search(r"^# data path / training step = [\d.]+% ", out, re.M)
    assert "# reproduce: " in out and "--clips 64" in out
