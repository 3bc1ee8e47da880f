"""benchmarks/online_client.py runs end to end (tiny settings) and prints a well-formed table."""

from __future__ import annotations

from benchmark_scripts import assert_tables_well_formed, load_benchmark_script, refuse_writes


def test_the_client_benchmark_compares_the_clients_against_the_servers_send_times(
    monkeypatch, capsys
):
    script = load_benchmark_script("online_client")
    refuse_writes(script, monkeypatch)
    script.main(["--rates", "4", "--seconds", "1", "--chunks", "3", "--gap-ms", "2", "--no-write"])
    out = capsys.readouterr().out
    assert_tables_well_formed(out, ["| client |"])
    rows = [line for line in out.splitlines() if line.startswith("| llem") or "reference" in line]
    assert len(rows) == 3
    for row in rows:
        assert (
            "| 10/10 |" in row
        )  # (at least 10 requests) every request's every chunk seen and matched to its send time
