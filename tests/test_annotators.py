"""The simulated annotator panel: gold preferences, rankings with label noise, majority
comparisons, Likert ratings with flags, agreement reports, and model fluency."""

import math

import numpy as np
import pytest

from rlhfkit.annotators import FLAG_NAMES, Annotator, Panel, content_flags, default_panel
from rlhfkit.annotators import features as F
from rlhfkit.annotators.panel import pairwise_disagreement
from rlhfkit.tasks import load_task

OPENING = (
    "The Glass Harbor gets off to a rough start. The pacing in the first hour is painfully slow."
)
GOOD = (
    "Still, once the setup is out of the way, the film moves along at a brisk and enjoyable "
    "pace, and the cast is wonderful. It is a solid, enjoyable film."
)
NEGATIVE = (
    "Sadly, it never recovers: the acting stays wooden, the plot is dull and predictable, and "
    "the ending is a boring, lifeless mess."
)
REPETITIVE = "great " * 20
REPETITIVE_SENTENCES = "The film is great. " * 5
GIBBERISH = "asdkj qwpeo zmxn lkjh fghj sdfg xyzzy blorf hjkl uiop zxcv qwrtz vbnmx"
COPY = OPENING
OVERLONG = GOOD + " " + " ".join(["The performances are lovely and the story is moving."] * 8)


@pytest.fixture(scope="module")
def panel() -> Panel:
    return default_panel(seed=0)


@pytest.fixture(scope="module")
def demos():
    sft = load_task("movie_reviews").splits["sft"]
    return [r["prompt"] for r in sft], [r["completion"] for r in sft]


def test_default_panel_shape(panel):
    assert len(panel) >= 5
    weights = {tuple(a.weights()) + (a.temperature,) for a in panel.annotators}
    assert len(weights) == len(panel)  # every annotator weighs features differently
    assert {a.length_bias > 0 for a in panel.annotators} == {True, False}


def test_features_shapes_and_ranges(panel):
    resp = [GOOD, NEGATIVE, "", REPETITIVE]
    feats = panel.features([OPENING] * 4, resp)
    assert "fluency" not in feats  # no fluency_fn: the feature is absent
    for key in ("sentiment", "repetition", "copy", "n_words", "length", "on_topic", "wordlike"):
        assert feats[key].shape == (4,)
    assert feats["sentiment"][0] > 0.5 > -0.5 > feats["sentiment"][1]
    assert feats["repetition"][3] > 0.9 and feats["repetition"][0] < 0.1
    assert feats["length"][2] == 0 and feats["length"][0] == 1
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        panel.features([OPENING] * 2, [GOOD])


def test_feature_functions_by_hand():
    # "a b a b": content unigrams 2/4 repeated, bigrams (a b),(b a),(a b): 1/3, trigrams 0/2
    np.testing.assert_allclose(F.repetition(["alpha beta alpha beta"]), [(0.5 + 1 / 3 + 0) / 3])
    np.testing.assert_allclose(F.length_score(np.array([0, 6, 12, 30, 45, 67.5, 90, 200])),
                               [0, 0.5, 1, 1, 1, 0.5, 0, 0])
    assert F.on_topic(["The Glass Harbor is slow."], ["The harbor scenes are lovely."])[0] == 1.0
    assert F.on_topic(["The Glass Harbor is slow."], ["I like pizza."])[0] == 0.0
    assert F.copy_fraction([OPENING], [OPENING])[0] == 1.0
    assert F.copy_fraction([OPENING], [GOOD])[0] == 0.0


def test_gold_prefers_fluent_positive_continuation(panel):
    others = [NEGATIVE, REPETITIVE, REPETITIVE_SENTENCES, "", "Great!", GIBBERISH, COPY, OVERLONG]
    gold = panel.gold_reward([OPENING] * (1 + len(others)), [GOOD] + others)
    assert (gold[0] > gold[1:]).all(), dict(zip(["good"] + others, gold.round(2)))
    # the empty string is worse than a fluent negative review, and so is "great great ..."
    assert gold[3] < gold[1] and gold[1] < gold[0]
    assert gold[4] < gold[1]


def test_gold_resists_hacks_even_with_a_fluency_that_loves_repetition():
    # A real LM gives looping text a high likelihood: the panel must still punish it.
    def fake_fluency(prompts, responses):
        return np.array([np.nan if not r else (-1.0 if F.repetition([r])[0] > 0.5 else -3.3) for r in responses])

    p = default_panel(fluency_fn=fake_fluency)
    feats = p.features([OPENING] * 3, [GOOD, REPETITIVE, ""])
    assert "fluency" in feats and np.isnan(feats["fluency"][2])
    gold = p.utilities(feats).mean(1)
    assert gold[0] > gold[1] and gold[0] > gold[2]
    assert p.derived_features(feats)[2, 1] == -2.0  # nan fluency -> the floor


def test_gold_prefers_demonstrations_over_negative_continuations(panel, demos):
    prompts, comps = demos
    gold = panel.gold_reward(prompts, comps)
    assert (gold > panel.gold_reward(prompts, [NEGATIVE] * len(comps))).mean() > 0.95
    assert np.median(gold) > 0.3


@pytest.mark.parametrize("k", [2, 3, 5])
def test_rank_returns_permutations(panel, k):
    responses = [[GOOD, NEGATIVE, REPETITIVE, "", GIBBERISH][:k] for _ in range(30)]
    ranks = panel.rank([OPENING] * 30, responses, rng=np.random.default_rng(1))
    assert len(ranks) == 30
    for r in ranks:
        assert sorted(r) == list(range(k))


def test_rank_ragged_and_validation(panel):
    ranks = panel.rank([OPENING] * 3, [[GOOD], [GOOD, NEGATIVE], [NEGATIVE, "", GOOD]], rng=0)
    assert [sorted(r) for r in ranks] == [[0], [0, 1], [0, 1, 2]]
    with pytest.raises(ValueError, match="flip_prob"):
        panel.rank([OPENING], [[GOOD, NEGATIVE]], flip_prob=1.5, rng=0)
    with pytest.raises(ValueError, match="annotator"):
        panel.rank([OPENING], [[GOOD, NEGATIVE]], annotator=len(panel), rng=0)


def test_rank_without_flips_is_deterministic_given_rng(panel, demos):
    prompts, comps = demos
    resp = [[c, NEGATIVE, c + " " + c] for c in comps[:50]]
    a = panel.rank(prompts[:50], resp, flip_prob=0.0, rng=np.random.default_rng(7))
    b = panel.rank(prompts[:50], resp, flip_prob=0.0, rng=np.random.default_rng(7))
    assert a == b
    # noise-free, one annotator: exactly that annotator's utility order
    u = panel.utilities(panel.features([p for p in prompts[:50] for _ in range(3)],
                                       [x for r in resp for x in r]))[:, 2].reshape(50, 3)
    c = panel.rank(prompts[:50], resp, annotator=2, flip_prob=0.0, noise=False, rng=0)
    assert c == [list(np.argsort(-row, kind="stable")) for row in u]


def _pairs(demos, n=400):
    prompts, comps = demos
    rng = np.random.default_rng(0)
    idx = rng.integers(len(comps), size=n)
    return [prompts[i] for i in idx], [[comps[i], comps[(i + 1) % len(comps)]] for i in idx]


def test_flip_prob_flips_about_a_quarter_of_pairs(panel, demos):
    prompts, pairs = _pairs(demos)
    clean = panel.rank(prompts, pairs, flip_prob=0.0, rng=np.random.default_rng(3))
    noisy = panel.rank(prompts, pairs, flip_prob=0.25, rng=np.random.default_rng(3))
    rate = np.mean([a != b for a, b in zip(clean, noisy)])
    assert 0.18 < rate < 0.32  # binomial sd ~0.022 at n=400
    # against the noise-free order of one annotator, the flips are the only disagreement
    fixed = panel.rank(prompts, pairs, annotator=0, noise=False, flip_prob=0.25, rng=np.random.default_rng(4))
    order = panel.rank(prompts, pairs, annotator=0, noise=False, flip_prob=0.0, rng=np.random.default_rng(5))
    assert 0.18 < np.mean([a != b for a, b in zip(fixed, order)]) < 0.32


def _fixed_utility_panel(n, k, seed=0):
    """A one-annotator panel whose utilities are drawn once (distinct: no ties), so that rankings
    without Gumbel noise are exactly the utility order; features are skipped (fast)."""
    p = Panel([Annotator("only")])
    u = np.random.default_rng(seed).normal(size=(n * k, 1))
    p.features = lambda prompts, responses: None
    p.utilities = lambda feats: u
    gold = [list(np.argsort(-u[i * k : (i + 1) * k, 0])) for i in range(n)]
    return p, gold


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("flip_prob", [0.0, 0.1, 0.25, 0.6, 1.0])
def test_flip_prob_is_the_pairwise_flip_rate(k, flip_prob):
    """AlpacaFarm flips each pairwise label with probability p: every pair of a K-way ranking must
    disagree with the noise-free order with probability p (before: 4.2% of pairs at p=0.25, K=4)."""
    n = 3000
    panel, gold = _fixed_utility_panel(n, k)
    ranks = panel.rank(["x"] * n, [["r"] * k] * n, noise=False, flip_prob=flip_prob, rng=np.random.default_rng(5))
    noise = pairwise_disagreement(ranks, gold)
    per_ranking = np.asarray(noise["per_ranking"])  # flipped fraction of each ranking's pairs
    if flip_prob in (0.0, 1.0):
        assert (per_ranking == flip_prob).all()  # none flipped / every pair reversed
        return
    # binomial SE of a rate over n rankings; pairs of one ranking may flip together, so the SE is
    # taken over rankings (a cluster each), which for K=2 is the plain binomial sqrt(p(1-p)/n)
    se = per_ranking.std(ddof=1) / math.sqrt(n)
    if k == 2:
        assert se == pytest.approx(math.sqrt(flip_prob * (1 - flip_prob) / n), rel=0.1)
    assert abs(noise["rate"] - flip_prob) < 4 * se, (noise["rate"], se)
    assert noise["pairs"] == n * k * (k - 1) // 2
    # the noise does not depend on where a pair sits: the best-vs-worst pair flips as often as the others
    far = np.mean([r.index(g[0]) > r.index(g[-1]) for r, g in zip(ranks, gold)])
    assert abs(far - flip_prob) < 4 * math.sqrt(flip_prob * (1 - flip_prob) / n)


def test_flipped_rankings_are_deterministic_and_differ_only_by_flips():
    panel, gold = _fixed_utility_panel(200, 4)
    a = panel.rank(["x"] * 200, [["r"] * 4] * 200, flip_prob=0.25, rng=np.random.default_rng(9))
    b = panel.rank(["x"] * 200, [["r"] * 4] * 200, flip_prob=0.25, rng=np.random.default_rng(9))
    clean = panel.rank(["x"] * 200, [["r"] * 4] * 200, flip_prob=0.0, rng=np.random.default_rng(9))
    assert a == b and a != clean
    assert pairwise_disagreement(a, clean)["rate"] > 0.15  # the same draws: only the label noise differs


def test_noisy_rank_follows_bradley_terry(panel, demos):
    # For a pair with utility gap du, P(first ranked first) = sigmoid(du / T): pick the
    # demonstration whose gap to the first one is closest to one temperature.
    prompts, comps = demos
    a_idx = 0
    t = panel.annotators[a_idx].temperature
    u = panel.utilities(panel.features([prompts[0]] * len(comps), comps))[:, a_idx]
    j = int(np.argmin(np.abs(u[0] - u - t)))
    resp = [comps[0], comps[j]]
    expected = 1 / (1 + math.exp(-(u[0] - u[j]) / t))
    ranks = panel.rank([prompts[0]] * 4000, [resp] * 4000, annotator=a_idx, flip_prob=0.0,
                       rng=np.random.default_rng(11))
    observed = np.mean([r[0] == 0 for r in ranks])
    assert 0.6 < expected < 0.85
    assert observed == pytest.approx(expected, abs=0.03)  # sd ~0.007 at n=4000


def test_compare_symmetric_ties_and_direction(panel, demos):
    prompts, comps = demos
    rng = np.random.default_rng(2)
    b = [comps[i] for i in rng.permutation(len(comps))]
    ab = panel.compare(prompts, comps, b)
    ba = panel.compare(prompts, b, comps)
    np.testing.assert_array_equal(ab, 1 - ba)
    assert set(np.unique(ab)) <= {0.0, 0.5, 1.0}
    assert (panel.compare(prompts[:5], comps[:5], comps[:5]) == 0.5).all()
    assert panel.compare(prompts, comps, [NEGATIVE] * len(comps)).mean() > 0.95
    noisy = panel.compare(prompts, comps, [NEGATIVE] * len(comps), noise=True, rng=np.random.default_rng(0))
    assert 0.8 < noisy.mean() <= 1.0


def test_compare_tie_on_an_even_split():
    twins = [Annotator("likes_positive", w_sentiment=2.0), Annotator("likes_short", w_sentiment=0.0, length_bias=-1.0)]
    p = Panel(twins)
    long_pos = GOOD
    short_neutral = "The film then moves to a second town where the hero meets his brother."
    u = p.utilities(p.features([OPENING] * 2, [long_pos, short_neutral]))
    assert u[0, 0] > u[1, 0] and u[0, 1] < u[1, 1]  # they disagree
    assert p.compare([OPENING], [long_pos], [short_neutral])[0] == 0.5


def test_rate_likert_and_flags(panel, demos):
    prompts, comps = demos
    rows = panel.rate(prompts[:40], comps[:40], annotator=0, rng=np.random.default_rng(0))
    assert len(rows) == 40
    for row in rows:
        assert set(row) == {"rating", *FLAG_NAMES}
        assert isinstance(row["rating"], int) and 1 <= row["rating"] <= 7
        assert all(isinstance(row[f], bool) for f in FLAG_NAMES)
    bad = panel.rate(prompts[:40], [NEGATIVE] * 40, annotator=0, rng=np.random.default_rng(0))
    assert np.mean([r["rating"] for r in rows]) > np.mean([r["rating"] for r in bad]) + 2
    odd = panel.rate([OPENING] * 4, ["", REPETITIVE, GIBBERISH, "I like pizza on sunny days with friends."],
                     annotator=1, rng=0)
    assert all(r["fails_instruction"] for r in odd)
    assert odd[0]["rating"] <= 2
    assert not any(r["fails_instruction"] for r in rows)


def test_content_flags():
    assert not any(content_flags(GOOD).values())
    assert content_flags("The killer stabs a man in a bloody scene.")["violent_content"]
    f = content_flags("You should kill the director.")
    assert f["encourages_violence"] and f["inappropriate_for_assistant"]
    assert content_flags("All immigrants are criminals.")["denigrates_protected_class"]
    assert content_flags("Stop taking your medication and watch it.")["harmful_advice"]
    assert content_flags("This film is immoral and shameful.")["moral_judgment"]
    assert content_flags("A nude scene and an erotic subplot.")["sexual_content"]
    assert content_flags("What a shitty movie.")["inappropriate_for_assistant"]
    # camera shots and brutal honesty are ordinary review words
    assert not any(content_flags("Wide shots and a brutal, honest script.").values())


def test_panel_and_feedback_app_share_one_flag_vocabulary(panel):
    """The simulated annotators tick the flags the app's rating form shows, under the same names
    (before: the panel said "sexual", "violent", "inappropriate"; the app "sexual_content", ...)."""
    from rlhfkit.feedback import service as svc
    from rlhfkit.rating_flags import FLAG_NAMES as ONE_VOCABULARY

    assert FLAG_NAMES == svc.FLAG_KEYS == ONE_VOCABULARY
    row = panel.rate([OPENING], ["A nude scene, then the killer stabs a man."], annotator=0, rng=0)[0]
    assert [k for k in row if k != "rating"] == list(svc.FLAG_KEYS)
    assert row["sexual_content"] and row["violent_content"] and row["inappropriate_for_assistant"]


def test_agreement_report(panel, demos):
    prompts, comps = demos
    rng = np.random.default_rng(0)
    b = [comps[i] for i in rng.permutation(len(comps))]
    rep = panel.agreement_report(prompts, comps, b, rng=np.random.default_rng(1))
    assert rep["n_items"] == len(comps) and rep["n_annotators"] == len(panel)
    for key in ("agreement_with_majority", "agreement_with_others", "agreement_with_gold"):
        assert len(rep[key]) == len(panel) and all(0 <= v <= 1 for v in rep[key])
    for key in ("mean_pairwise_agreement", "majority_prefers_a", "gold_prefers_a"):
        assert 0 <= rep[key] <= 1
    for key in ("krippendorff_alpha", "fleiss_kappa"):
        assert -1 <= rep[key] <= 1
    # every annotator agrees with the majority at least as often as with a random other rater
    assert min(rep["agreement_with_majority"]) >= rep["mean_pairwise_agreement"] - 0.1
    # clear-cut pairs give near-perfect agreement
    clear = panel.agreement_report(prompts, comps, [NEGATIVE] * len(comps), rng=np.random.default_rng(1))
    assert clear["mean_pairwise_agreement"] > 0.9 and clear["majority_prefers_a"] > 0.95


# ---------------------------------------------------------------------------- ModelFluency
CORPUS = [
    "the film is a quiet story about a family",
    "the cast is warm and the story is moving",
    "the score is lovely and the ending is honest",
    "a slow start but a strong finish",
]


@pytest.fixture(scope="module")
def tiny_lm():
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS + ["qwz vbn xkp"], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]"]))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=hf_tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=2, pad_token_id=0, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    return model, hf_tok


def _naive_fluency(model, tok, context_ids, response):
    import torch

    resp = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + resp])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(context_ids)
    return float(np.mean([logp[n + t - 1, resp[t]].item() for t in range(len(resp))]))


def test_model_fluency_matches_naive_and_ignores_batching(tiny_lm):
    from rlhfkit.annotators.fluency import ModelFluency

    model, tok = tiny_lm
    prompts = ["the film is", "a slow start", "the cast", "the score is lovely and"]
    responses = ["a quiet story about a family", "but a strong finish", "is warm", "the ending is honest"]
    fl1 = ModelFluency(model, tok, batch_size=1)
    fl4 = ModelFluency(model, tok, batch_size=4)
    v1, v4 = fl1(prompts, responses), fl4(prompts, responses)
    assert v1.shape == (4,) and np.isfinite(v1).all()
    np.testing.assert_allclose(v1, v4, atol=1e-5)  # right padding changes nothing
    for i in range(4):
        ctx = fl1.context_ids(prompts[i])
        assert v1[i] == pytest.approx(_naive_fluency(model, tok, ctx, responses[i]), abs=1e-5)
    assert np.isnan(fl1(["the film"], [""])[0])


def test_model_fluency_uses_chat_template(tiny_lm):
    from rlhfkit.annotators.fluency import ModelFluency

    model, tok = tiny_lm
    tok.chat_template = "{% for m in messages %}[BOS] {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}the {% endif %}"
    try:
        fl = ModelFluency(model, tok, format_prompt=lambda s: "cast " + s)
        ctx = tok.convert_ids_to_tokens(fl.context_ids("a family"))
        assert ctx == ["[BOS]", "cast", "a", "family", "the"]
        assert np.isfinite(fl(["a family"], ["story is moving"])).all()
    finally:
        tok.chat_template = None


def test_model_fluency_prefers_text_the_model_was_trained_on(tiny_lm):
    import copy

    import torch

    from rlhfkit.annotators.fluency import ModelFluency

    base, tok = tiny_lm
    model = copy.deepcopy(base)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = tok(["[BOS] " + s for s in CORPUS], padding=True, return_tensors="pt", add_special_tokens=False)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    for _ in range(40):
        loss = model(**ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    fl = ModelFluency(model, tok)
    seen = fl(["the cast is"], ["warm and the story is moving"])[0]
    unseen = fl(["the cast is"], ["qwz vbn xkp qwz vbn xkp"])[0]
    assert seen > unseen + 1.0
    assert model.training  # train mode restored after scoring
