"""HumanEval: the unbiased pass@k against hand-computed values, stop sequences, the completions
file, scoring through the CLI, decoding with a tiny model and the code tokenizer, and the
canonical solutions' 164/164."""
from __future__ import annotations

import json
from math import comb

import pytest

from pangu_ms.cli import main
from pangu_ms.data.humaneval import load_humaneval
from pangu_ms.errors import DataError
from pangu_ms.eval.humaneval import pass_at_k, read_completions, tagged_prompt, truncate


@pytest.mark.parametrize("n,c,k,expected", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0),
    (5, 2, 1, 0.4),                        # c / n
    (5, 2, 2, 1 - 3 / 10),                 # 1 - C(3,2)/C(5,2)
    (20, 3, 10, 1 - 19448 / 184756),       # 1 - C(17,10)/C(20,10) = 0.894737
    (10, 1, 10, 1.0),                      # n - c < k: some draw of 10 holds the correct one
    (200, 0, 100, 0.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in ((5, 6, 1), (5, 2, 6), (5, 2, 0)):
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(n, c, k)


def test_truncate_at_top_level_stop_sequences():
    body = "    x = 1\n    # an indented comment stays\n    return x\n"
    assert truncate(body + "\ndef other():\n    pass") == body
    assert truncate(body + "\n\nclass A:\n") == body + "\n"
    assert truncate(body + "\nif __name__ == '__main__':\n") == body
    assert truncate(body + "\nprint(f(1))") == body
    assert truncate(body + "\n# a top-level comment") == body
    assert truncate(body) == body


def test_tagged_prompt_removes_only_the_docstring():
    p = load_humaneval()[2]  # truncate_number
    doc, code = tagged_prompt(p)
    assert doc.startswith("Given a positive floating point number")
    assert code == "\n\ndef truncate_number(number: float) -> float:\n" and '"""' not in code


def test_completions_file_errors_name_the_line(tmp_path):
    problems = load_humaneval()
    f = tmp_path / "c.jsonl"
    f.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n{"task_id": "HumanEval/999", '
                 '"completion": ""}\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: unknown task_id 'HumanEval/999'"):
        read_completions(f, problems)
    f.write_text('{"task_id": "HumanEval/0"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:1: expected"):
        read_completions(f, problems)
    f.write_text('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: not JSON"):
        read_completions(f, problems)


def _cli_json(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_scores_a_completions_file(tmp_path, capsys):
    problems = load_humaneval()
    rows = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems[:3]]
    rows += [{"task_id": "HumanEval/0", "completion": "    return True\n"},
             {"task_id": "HumanEval/1", "completion": "    print('passed')\n    return []\n"}]
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = _cli_json(capsys, "eval", "--task", "humaneval", "--completions", str(f), "--json", "--workers", "2")
    assert (s["problems"], s["samples"], s["correct"]) == (3, 5, 3)
    assert s["pass@k"] == {"1": pytest.approx((0.5 + 0.5 + 1.0) / 3)} and s["isolation"] in ("namespaces", "userns", "none")
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["n"], r["correct"]) for r in lines] == [("HumanEval/0", 2, 1), ("HumanEval/1", 2, 1),
                                                                    ("HumanEval/2", 1, 1)]
    assert [x["passed"] for x in lines[1]["samples"]] == [True, False] and lines[0]["isolation"] == s["isolation"]


def test_cli_rejects_both_or_neither_source(capsys):
    assert main(["eval", "--task", "humaneval"]) == 2
    assert "exactly one of --ckpt" in capsys.readouterr().err
    assert main(["eval", "--task", "humaneval", "--completions", "x.jsonl", "--samples", "3",
                 "--temperature", "0"]) == 2
    assert "greedy decoding" in capsys.readouterr().err


@pytest.fixture(scope="module")
def coder_run(tmp_path_factory, code_tokenizer_dir):
    """A run directory with one checkpoint of a random tiny model carrying the code tokenizer."""
    import mindspore as ms

    from pangu_testing import tiny_model_config
    from pangu_ms.config import JobConfig, TokenizerConfig
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
    from pangu_ms.tokenizer import CodeTokenizer
    from pangu_ms.train.checkpoint import save

    root = tmp_path_factory.mktemp("coder_run")
    tok = CodeTokenizer.from_dir(code_tokenizer_dir)
    job = JobConfig(model=tiny_model_config(vocab_size=tok.vocab_size, seq_length=64),
                    tokenizer=TokenizerConfig(kind="code", normalization="identity", path=str(code_tokenizer_dir),
                                              vocab_size=tok.vocab_size))
    job.run.output_dir = str(root / "pretrain")
    ms.set_seed(5)
    save(job.run.output_dir, PanguAlphaWithLoss(job.model), step=1, data_step=0, tokens_seen=0, job=job)
    return root / "pretrain"


def test_decoding_and_scoring_from_a_checkpoint(coder_run, tmp_path, capsys):
    out = tmp_path / "he_results.jsonl"
    args = ["eval", "--task", "humaneval", "--ckpt", str(coder_run), "--limit", "2", "--max-new-tokens", "12",
            "--out", str(out), "--json", "--workers", "2"]
    s = _cli_json(capsys, *args)
    assert (s["problems"], s["samples"], s["temperature"]) == (2, 2, 0.0) and set(s["pass@k"]) == {"1"}
    samples = [json.loads(x) for x in (tmp_path / "he_samples.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in samples] == ["HumanEval/0", "HumanEval/1"]
    results = [json.loads(x) for x in out.read_text().splitlines()]
    for r, smp in zip(results, samples):
        (only,) = r["samples"]
        assert only["completion"] == smp["completion"] == truncate(smp["completion"])
        assert only["finish"] in ("eot", "stop", "length") and only["new_tokens"] <= 12
    again = _cli_json(capsys, *args)  # greedy decoding is reproducible
    assert [json.loads(x)["completion"] for x in (tmp_path / "he_samples.jsonl").read_text().splitlines()] == \
        [r["completion"] for r in samples] and again["correct"] == s["correct"]
    sampled = _cli_json(capsys, "eval", "--task", "humaneval", "--ckpt", str(coder_run), "--limit", "1",
                        "--samples", "3", "--temperature", "0.8", "--top-p", "0.95", "--seed", "1", "--prompt-format", "tagged",
                        "--max-new-tokens", "6", "--out", str(tmp_path / "s.jsonl"), "--json")
    assert (sampled["samples"], sampled["samples_per_problem"]) == (3, 3) and set(sampled["pass@k"]) == {"1"}
    assert sampled["prompt_format"] == "tagged"


@pytest.mark.e2e
def test_canonical_solutions_score_164_of_164(tmp_path, capsys):
    rows = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in load_humaneval()]
    f = tmp_path / "canonical.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = _cli_json(capsys, "eval", "--task", "humaneval", "--completions", str(f), "--json", "--timeout", "10")
    failed = [json.loads(x) for x in (tmp_path / "canonical.jsonl_results.jsonl").read_text().splitlines()
              if not json.loads(x)["correct"]]
    assert s["correct"] == s["problems"] == 164 and s["pass@k"] == {"1": 1.0}, failed[:3]
