"""Does a saved reward model score the same in plain transformers as in rlhfkit?

    .venv/bin/python scripts/check_reward_interop.py RUN/reward RUN/prefs/rankings.jsonl [--rows 64] [--padding right|left]

Scores the first ROWS (prompt, response) pairs of a rankings/pairs file twice: with rlhfkit's
RewardScorer, and as a transformers user would -- AutoModelForSequenceClassification and AutoTokenizer
from the folder, the chat template with the folder's recorded system prompt, response + EOS, one padded
batch -- and prints the largest difference and the correlation.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reward")
    ap.add_argument("data")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--padding", choices=["right", "left"], default="right")
    args = ap.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.cli_options import quiet_libraries
    from rlhfkit.scoring import RewardScorer

    quiet_libraries()
    prompts, responses = [], []
    for line in open(args.data, encoding="utf-8"):
        row = json.loads(line)
        for r in row.get("responses") or [row["chosen"], row["rejected"]]:
            prompts.append(row["prompt"])
            responses.append(r)
    prompts, responses = prompts[: args.rows], responses[: args.rows]

    ours = RewardScorer.load(args.reward, device="cpu")(prompts, responses)

    model = AutoModelForSequenceClassification.from_pretrained(args.reward).eval()
    tok = AutoTokenizer.from_pretrained(args.reward)
    tok.padding_side = args.padding
    system = (model.config.rlhfkit_scoring or {}).get("system_prompt")
    texts = []
    for p, r in zip(prompts, responses):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        texts.append(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + r + tok.eos_token)
    with torch.no_grad():
        theirs = model(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0]
    diff = (theirs - ours).abs()
    corr = torch.corrcoef(torch.stack([theirs, ours]))[0, 1].item()
    print(f"{len(texts)} responses, {args.padding} padding: max |transformers - rlhfkit| = {diff.max().item():.2e}, "
          f"mean {diff.mean().item():.2e}, correlation {corr:.6f}; pad token {tok.pad_token!r} (EOS {tok.eos_token!r}); "
          f"reference mean {model.config.rlhfkit_reference_mean:+.4f} (rlhfkit's PPO and reports subtract it)")


if __name__ == "__main__":
    main()
