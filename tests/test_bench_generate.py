"""bench/generate.py --vs-hf runs rlhfkit's sampler and transformers' generate on the same work: in the
fixed-length mode both produce exactly batch x new-tokens tokens. Only the shape of the figures is checked,
never a time. bench/update_padding.py (PPO's update with and without dropping padding columns),
bench/attention.py (the attention kernels per key length) and bench/shared_rows.py likewise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "generate.py"


def test_vs_hf_compares_equal_token_counts(capsys):
    spec = importlib.util.spec_from_file_location("bench_generate", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--model", "tiny", "--vs-hf", "--prompts", "4", "--batch-size", "4", "--new-tokens", "5",
                       "--rounds", "1", "--precision", "no"])
    assert [r["mode"] for r in rows] == ["fixed", "eos"]
    fixed, eos = rows
    assert fixed["rlhfkit_tokens"] == fixed["hf_tokens"] == 4 * 5
    assert 4 <= eos["rlhfkit_tokens"] <= 20 and 4 <= eos["hf_tokens"] <= 20
    assert all(r["rlhfkit_s"] > 0 and r["hf_s"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "precision fp32" in out and "HF/rlhfkit" in out


def test_scaling_bench_prints_a_cell_per_grid_point(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_scaling", BENCH.parent / "scaling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--model", "tiny", "--sequences", "4", "8", "--new-tokens", "3", "--samples", "2",
                       "--plot", str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json")])
    assert [(r["sequences"], r["new_tokens"]) for r in rows] == [(4, 3), (8, 3)]
    assert all(r["s_per_step"] > 0 and 1 <= r["mean_length"] <= 3 for r in rows)
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "s.json").exists()


def test_engine_parts_bench_prints_each_part(capsys):
    spec = importlib.util.spec_from_file_location("bench_engine_parts", BENCH.parent / "engine_parts.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--model", "tiny", "--rows", "3"])
    out = capsys.readouterr().out
    assert "oneDNN packed" in out and "sampling step" in out and "decode step, 3 rows" in out
    assert "attention for one decode query, 3 rows" in out and "forward over 3 prompts" in out
    assert "scoring pass, 6 responses" in out
    from rlhfkit.precision import native_bf16

    bench.main(["--model", "tiny", "--rows", "3", "--precision", "bf16"])
    out = capsys.readouterr().out
    # without native bf16 oneDNN cannot pack bf16 weights: the bench says so instead of failing
    assert ("transformers (autocast)" in out) if native_bf16("cpu") else ("no native bf16" in out and "nothing measured" in out)


def test_engine_parts_compiled_layers_run(capsys):
    """Part 7 (--compile) on the tiny model: the compiled layers run and the eager ones are put back. Traced by
    dynamo and AOTAutograd without inductor's C++ code generation (aot_eager): inductor's cold compile alone took
    96 s of a CI run on a 2-core AVX2 host, and part 7 is a measurement the README reports, not a path users run."""
    from rlhfkit import engine
    from rlhfkit.forward import encode_prompts
    from rlhfkit.models import load_causal_lm, load_tokenizer

    spec = importlib.util.spec_from_file_location("bench_engine_parts", BENCH.parent / "engine_parts.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = (engine.PackedLlama.qkv, engine.PackedLlama.attend_and_mlp, engine._linear)
    tok, lm = load_tokenizer("tiny"), load_causal_lm("tiny", trainable=False)
    ids, mask = encode_prompts(tok, ["Hi", "Tell me about cats."])
    bench.compiled_layers(lm, ids, mask, bf16=False, backend="aot_eager")
    assert "7. torch.compile (aot_eager) of the engine's layers, 2 rows" in capsys.readouterr().out
    assert (engine.PackedLlama.qkv, engine.PackedLlama.attend_and_mlp, engine._linear) == before


def test_update_padding_bench_times_both_variants_on_one_rollout(capsys):
    spec = importlib.util.spec_from_file_location("bench_update_padding", BENCH.parent / "update_padding.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--model", "tiny", "--prompts", "6", "--new-tokens", "5", "--minibatch", "2", "--rounds", "1",
                      "--precision", "no"])
    assert len(out["seconds"][False]) == len(out["seconds"][True]) == 1
    (run_full, real_full), (run_trim, real_trim) = out["columns"][False], out["columns"][True]
    assert real_full == real_trim and real_trim <= run_trim <= run_full
    assert "untrimmed/trimmed" in capsys.readouterr().out


def test_attention_bench_times_every_kernel_per_length(capsys):
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH.parent / "attention.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--rows", "1", "--lengths", "16,32", "--repeats", "1"])
    assert set(out) == {16, 32}
    assert all(set(cells) == {"sdpa bf16", "sdpa on fp32", "eager"} for cells in out.values())
    assert all(f > 0 and fb > 0 for cells in out.values() for f, fb in cells.values())
    assert "forward+backward" in capsys.readouterr().out


def test_shared_rows_bench_reports_both_ways(capsys):
    """bench/shared_rows.py: both ways of expanding a shared prompt's rows, on both tensors; index_select's
    backward adds in index order, so its repeats give one gradient (advanced indexing's may give several)."""
    spec = importlib.util.spec_from_file_location("bench_shared_rows", BENCH.with_name("shared_rows.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--prompts", "3", "--samples", "2", "--prompt-tokens", "4", "--reps", "3"])
    assert len(res) == 4 and all(r["ms"] > 0 and 1 <= r["distinct_gradients"] <= 3 for r in res.values())
    assert all(r["distinct_gradients"] == 1 for k, r in res.items() if k.endswith("index_select"))
    assert "CPU:" in capsys.readouterr().out
