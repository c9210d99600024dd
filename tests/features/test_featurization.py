"""The one featurization: same features for training and serving, no label leaks, sensible fallbacks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import Weeks
from retail_prediction.artifact.archive import ArtifactError, pack_artifact, read_artifact
from retail_prediction.contract import BasketLine, Codes, Lines
from retail_prediction.data import lgsr
from retail_prediction.data.baskets import table_to_baskets
from retail_prediction.data.reading import read_transactions
from retail_prediction.features import kernel as featurize_kernel
from retail_prediction.features import latent
from retail_prediction.features.client import ClientLines, client_features, encode_clients
from retail_prediction.features.fitting import fit_tables, out_of_fold_features
from retail_prediction.features.tables import (
    FeatureTables,
    basket_features,
    encode,
    encoded_features,
    line_distributions,
)
from retail_prediction.serving.predictor import Predictor


@pytest.fixture(scope="module")
def baskets(weeks: Weeks):
    return table_to_baskets(read_transactions(weeks.train[:3]))


@pytest.fixture(scope="module")
def learned(baskets):
    classes = tuple(sorted(set(baskets.label)))
    y = np.searchsorted(classes, baskets.label)
    tables, folds = fit_tables(baskets.lines, y, classes, hierarchy_names=lgsr.HIERARCHY, n_folds=5)
    return tables, folds, y


def _items_of(baskets, b: int) -> list[BasketLine]:
    lines = baskets.lines
    idx = np.flatnonzero(lines.basket == b)
    out = []
    for i in idx:
        hierarchy = tuple(str(h.values[h.index[i]]) for h in lines.hierarchy)
        out.append(BasketLine.of(str(lines.product.values[lines.product.index[i]]), float(lines.quantity[i]),
                               float(lines.spend[i] / lines.quantity[i]), None, hierarchy))
    return out


def _served_features(lines: ClientLines, predictor: Predictor) -> np.ndarray:
    return encoded_features(lines.enc, lines.spend, lines.quantity, lines.basket, lines.n_baskets, predictor.tables)


def test_serving_path_gives_the_training_features_for_later_baskets(model_and_week: tuple[Path, Path]) -> None:
    """Files -> Arrow -> features (training/batch) equals JSON-like items -> features (API), basket by basket."""
    model, week = model_and_week
    predictor = Predictor.load(model)
    later = table_to_baskets(read_transactions(week))
    from_files = predictor.features(later.lines)
    picks = np.random.default_rng(1).choice(later.lines.n_baskets, 200, replace=False)
    one_by_one = np.vstack([
        _served_features(encode_clients([_items_of(later, int(b))], predictor.tables), predictor) for b in picks
    ])
    # Unit price is rebuilt from spend / quantity on the API side: equal to float32 precision.
    np.testing.assert_allclose(one_by_one, from_files[picks], rtol=1e-6, atol=1e-6)
    batch = encode_clients([_items_of(later, int(b)) for b in picks], predictor.tables)
    np.testing.assert_allclose(_served_features(batch, predictor), from_files[picks], rtol=1e-6, atol=1e-6)
    # Codes looked up straight from the client's strings land on the rows the file path finds; scored.
    for b in picks[:50]:
        lines = encode_clients([_items_of(later, int(b))], predictor.tables)
        np.testing.assert_array_equal(lines.enc.level_rows, encode(later.lines.take(later.lines.basket == b),
                                                                   predictor.tables).level_rows)
        np.testing.assert_allclose(predictor.score([_items_of(later, int(b))]).proba[0],
                                   predictor.predict_features(from_files[[b]])[0], rtol=1e-5, atol=1e-6)


def test_client_features_is_the_step_by_step_path(model_and_week: tuple[Path, Path]) -> None:
    """The API's one-call path (`client_features`) gives the step-by-step loops' features and unknown counts,
    bit for bit, for baskets in both forms (dict keyed by product, list), with categories and unknown codes."""
    model, week = model_and_week
    predictor = Predictor.load(model)
    later = table_to_baskets(read_transactions(week))
    baskets: list = [_items_of(later, b) for b in range(40)]
    baskets[1] = {item.product_id: item for item in baskets[1]}  # the object form
    baskets[2] = [BasketLine("NEW-1", 1, 2.0, "unknown-category"), BasketLine("NEW-2", 3, 0.5),
                  BasketLine.of("NEW-3", 1, 9.9, None, (None, "UNKNOWN-GROUP"))]
    baskets[3] = [BasketLine.of("NEW-4", 2, 1.0, str(predictor.tables.levels[2].vocab[0]))]
    features, unknown = client_features(baskets, predictor.tables)
    lines = encode_clients(baskets, predictor.tables)
    np.testing.assert_array_equal(features, _served_features(lines, predictor))
    expected = np.zeros((len(baskets), 2), dtype=np.int64)
    featurize_kernel.unknown_codes(lines.enc.level_rows, lines.basket, lines.named, expected)
    np.testing.assert_array_equal(unknown, expected)
    assert unknown[2].tolist() == [3, 2] and unknown[3].tolist() == [1, 0]


def test_compiled_loops_follow_the_definitions(baskets, learned) -> None:
    """The compiled loops against a plain NumPy statement of what they compute, on generated baskets."""
    tables, _, _ = learned
    lines = baskets.lines.take(np.flatnonzero(baskets.lines.basket < 300))
    lines = replace(lines, n_baskets=300)
    enc = encode(lines, tables)
    p, evidence = line_distributions(lines, enc, tables)
    m = tables.prior_strength
    # The log price from the featurization itself: a band edge sits exactly on some training line's price,
    # where another log1p's last bit would move the line to the next band.
    log_price = np.empty(lines.n_lines)
    featurize_kernel.log_prices(lines.spend, lines.quantity, log_price)
    np.testing.assert_allclose(log_price, np.log1p(lines.spend / lines.quantity), rtol=1e-15)
    band = np.searchsorted(tables.price_edges, log_price)
    want = np.tile(tables.prior_share, (lines.n_lines, 1))
    # Coarse to fine: the price band, each hierarchy level from the top, then the product; unknown codes skip.
    steps = [(tables.price_counts, band), *((lv.counts, rows) for lv, rows in
                                            zip(tables.levels[::-1], enc.level_rows[::-1], strict=True))]
    for counts, rows in steps:
        known = rows >= 0
        c = counts[np.maximum(rows, 0)]
        pulled = (c + m * want) / (c.sum(axis=1) + m)[:, None]
        want = np.where(known[:, None], pulled, want)
    np.testing.assert_allclose(p, want, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(evidence, np.where(enc.level_rows[0] >= 0,
                                                  tables.levels[0].counts[np.maximum(enc.level_rows[0], 0)].sum(axis=1),
                                                  0.0), rtol=1e-12)
    rows = basket_features(lines, tables, enc=enc)
    names = tables.feature_names()
    n = np.bincount(lines.basket, minlength=300)
    k = tables.n_classes
    per_basket = np.zeros((300, k))
    np.add.at(per_basket, lines.basket, p)
    col = [names.index(f"p_mean_{c}") for c in tables.classes]
    np.testing.assert_allclose(rows[:, col], per_basket / n[:, None], rtol=1e-6)
    p_max = np.zeros((300, k))
    np.maximum.at(p_max, lines.basket, p)
    np.testing.assert_allclose(rows[:, [names.index(f"p_max_{c}") for c in tables.classes]], p_max, rtol=1e-6)
    votes = np.zeros((300, k))
    np.add.at(votes, (lines.basket, p.argmax(axis=1)), 1.0)
    np.testing.assert_allclose(rows[:, [names.index(f"vote_share_{c}") for c in tables.classes]], votes / n[:, None],
                               rtol=1e-6)
    np.testing.assert_array_equal(rows[:, names.index("n_lines")], n)
    np.testing.assert_allclose(rows[:, names.index("log_spend")], np.log1p(np.bincount(lines.basket, lines.spend)),
                               rtol=1e-6)
    np.testing.assert_allclose(rows[:, names.index("mean_log_unit_price")],
                               np.bincount(lines.basket, log_price) / n, rtol=1e-6, atol=1e-7)
    # The composition model's probabilities: latent.py's definition (the one its estimation fits) applied to
    # the row's own inputs, the latent class shares and P(all lines of a class).
    g = rows[:, [names.index(f"g_prob_{c}") for c in tables.classes]]
    np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=1e-5)
    share = rows[:, [names.index(f"q_share_{c}") for c in tables.classes]].astype(np.float64)
    pure = rows[:, [names.index(f"q_pure_{c}") for c in tables.classes]].astype(np.float64)
    with np.errstate(divide="ignore"):  # a float32 P(all lines) of 0: log -inf, and exp gives back the 0
        x = latent.composition_inputs(share, np.log(pure))
    want_g = np.exp(latent.log_softmax(x @ tables.latent.coef.T + tables.latent.intercept))
    np.testing.assert_allclose(g, want_g, rtol=1e-4, atol=1e-6)


def test_price_bands_are_numpys_searchsorted() -> None:
    edges = np.array([-1.0, 0.0, 0.5, 0.5, 2.0])
    prices = np.array([-np.inf, -2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0, np.inf, np.nan])
    for e in (edges, np.zeros(0), edges[:1]):
        out = np.empty(prices.size, dtype=np.int32)
        featurize_kernel.price_bands(prices, e, out)
        np.testing.assert_array_equal(out, np.searchsorted(e, prices))


def test_out_of_fold_features_do_not_see_their_own_label(baskets, learned) -> None:
    tables, folds, y = learned
    flipped = y.copy()
    b = int(np.flatnonzero(np.bincount(baskets.lines.basket) == 1)[0])  # a one-line basket: strongest evidence
    flipped[b] = (y[b] + 1) % len(tables.classes)
    tables2, folds2 = fit_tables(baskets.lines, flipped, tables.classes, hierarchy_names=lgsr.HIERARCHY, n_folds=5)
    own = out_of_fold_features(baskets.lines, tables, folds)[b]
    own_flipped = out_of_fold_features(baskets.lines, tables2, folds2)[b]
    np.testing.assert_array_equal(own, own_flipped)
    # ...whereas the in-sample features (what serving uses) do move with the label.
    assert not np.array_equal(basket_features(baskets.lines, tables)[b], basket_features(baskets.lines, tables2)[b])


def test_unknown_products_fall_back_to_hierarchy_then_price(learned) -> None:
    tables, _, _ = learned
    names = tables.feature_names()
    known = tables.levels[0].vocab[0]
    group = tables.levels[1].vocab[0]

    def feats(product: str, hierarchy: tuple[str | None, ...]) -> np.ndarray:
        lines = encode_clients([[BasketLine.of(product, 1, 2.5, None, hierarchy)]], tables)
        return encoded_features(lines.enc, lines.spend, lines.quantity, lines.basket, 1, tables)[0]

    seen = feats(str(known), ())
    by_group = feats("NEW-PRODUCT", (str(group), None, None, None))
    bare = feats("NEW-PRODUCT", ())
    assert seen[names.index("unseen_product_share")] == 0
    assert by_group[names.index("unseen_product_share")] == 1 and by_group[names.index("unknown_hierarchy_share")] == 0
    assert bare[names.index("unknown_hierarchy_share")] == 1
    p = [names.index(f"p_mean_{c}") for c in tables.classes]
    group_share = tables.levels[1].counts[0] / tables.levels[1].counts[0].sum()
    # Falling back to the group, the line's distribution is the group's (smoothed), not the price band's.
    assert np.abs(by_group[p] - group_share).sum() < np.abs(bare[p] - group_share).sum()
    for f in (seen, by_group, bare):
        assert np.isfinite(f).all() and abs(f[p].sum() - 1) < 1e-5


def test_tables_round_trip_through_plain_files(learned) -> None:
    tables, _, _ = learned
    again = FeatureTables.load(tables.spec(), tables.to_npz_bytes())
    lines = Lines(basket=np.array([0, 0, 1]), n_baskets=2, product=Codes.from_strings(["A", "B", "A"]),
                  quantity=np.array([1.0, 2, 3]), spend=np.array([1.0, 5, 2]))
    np.testing.assert_array_equal(basket_features(lines, tables), basket_features(lines, again))


def test_one_basket_or_many_give_identical_rows(baskets, learned) -> None:
    tables, _, _ = learned
    all_rows = basket_features(baskets.lines, tables)
    for b in (0, 7, baskets.lines.n_baskets - 1):
        idx = np.flatnonzero(baskets.lines.basket == b)
        sub = baskets.lines.take(idx)
        single = Lines(np.zeros(idx.size, dtype=np.int64), 1, sub.product, sub.quantity, sub.spend, sub.hierarchy)
        np.testing.assert_array_equal(basket_features(single, tables)[0], all_rows[b])


def test_small_and_large_code_lookups_agree(learned, baskets) -> None:
    from retail_prediction.features.tables import lookup

    tables, _, _ = learned
    level = tables.levels[0]
    sample = np.concatenate([level.vocab[:20], ["UNKNOWN", "", "PRD"]])
    codes = Codes.from_strings(sample)
    np.testing.assert_array_equal(level.rows(codes, sample.size), lookup(level.vocab, codes, sample.size))
    many = baskets.lines.product
    np.testing.assert_array_equal(level.rows(many, baskets.lines.n_lines),
                                  lookup(level.vocab, many, baskets.lines.n_lines))


def test_latent_estimation_recovers_products_seen_only_in_multi_line_baskets() -> None:
    """Labels from the majority class of a basket's products: the estimation learns that rule and, from it,
    the class of products that never appear alone, where 1/n²-weighted label counts stay ambiguous."""
    from retail_prediction.features.latent_fit import estimate

    rng = np.random.default_rng(0)
    n_products, k = 40, 3
    true = np.arange(n_products) % k
    alone = np.repeat(np.arange(30), 5)  # products 30-39 are never alone in a basket
    trios = rng.integers(0, n_products, (3000, 3))
    product = np.concatenate([alone, trios.ravel()])
    basket = np.concatenate([np.arange(alone.size), alone.size + np.repeat(np.arange(len(trios)), 3)])
    votes = np.stack([(true[trios] == c).sum(axis=1) for c in range(k)], axis=1)
    label = np.concatenate([true[alone], np.where(votes.max(axis=1) >= 2, votes.argmax(axis=1), 0)])
    n = np.bincount(basket)
    counts = np.zeros((n_products, k))
    np.add.at(counts, (product, label[basket]), 1.0 / n[basket] ** 2)
    start = (counts + 1) / (counts + 1).sum(axis=1, keepdims=True)
    posterior, _, _ = estimate(product, basket, label, basket.max() + 1, start, np.full((n_products, k), 1 / k))
    np.testing.assert_array_equal(posterior.argmax(axis=1), true)
    # Sure of them, where the weighted counts it started from were not.
    assert posterior[30:].max(axis=1).min() > 0.9 > 0.6 > start[30:].max(axis=1).min()


def test_tables_of_another_feature_spec_are_refused_with_advice(learned) -> None:
    tables, _, _ = learned
    spec = {**tables.spec(), "feature_spec_version": 1}
    with pytest.raises(ValueError, match=r"feature spec version 1.*retrain"):
        FeatureTables.load(spec, tables.to_npz_bytes())
    reloaded = FeatureTables.load(tables.spec(), tables.to_npz_bytes())
    assert reloaded.feature_names() == tables.feature_names()


def test_a_model_whose_hierarchy_a_request_cannot_carry_is_refused(trained_model: Path, tmp_path: Path) -> None:
    """Serving reads each level's code from the request line's field of that name: a model with a level no
    request field carries is refused at load, not answered with a 500 per request."""
    artifact = read_artifact(trained_model)
    spec = json.loads(artifact.files["feature_spec.json"])
    spec["hierarchy"] = [*spec["hierarchy"][:-1], "SHELF_CODE"]
    files = {**artifact.files, "feature_spec.json": json.dumps(spec).encode()}
    pack_artifact(tmp_path / "m.tar.gz", files, metadata={"model_version": "shelf"})
    with pytest.raises(ArtifactError, match="shelf_code") as info:
        Predictor.load(tmp_path / "m.tar.gz")
    assert info.value.reason == "bad_model"
