"""Synthetic LGSR transaction weeks that a loader cannot tell from the real files.

`generate` writes `transactions_YYYYWW.csv.gz` (one per shop week) and `time.csv.gz` with the current
header (`seg_1`/`seg_2`), the real column order, code formats and quoting (empty codes written `""`,
nothing else quoted, SPEND as the shortest float text such as `1.3` or `2.0`). Lines are sorted by store
then product, as in the real files. Defaults come from `calibration.json`, aggregate figures measured on
the real weeks by `scripts/calibrate_synthetic.py` (no real row or identifier is stored).

How the label works (measured on the 94 real weeks, 2.5 M lines, 392,510 baskets):

* Every product has one fixed latent class in {LA, MM, UM, XX}: in single-line baskets the label is always
  the product's class (4,665 products, no exception).
* A basket's label is a deterministic function of how many of its lines fall in each class. XX lines never
  vote: a basket is XX exactly when all its lines are XX products. Otherwise, with
  ``d = (n_UM - n_LA) / (n_LA + n_MM + n_UM)`` (line counts, not spend or quantity), the label is UM when
  ``d > 0.1828``, LA when ``d < -0.2266`` and MM in between. On the 342,596 baskets whose products all have
  a known class this rule reproduces all of the 3,664 distinct (n_LA, n_MM, n_UM) compositions with zero
  exceptions (majority by count gets 72 %, by spend 70 %; the thresholds are asymmetric: one UM line in
  five flips a basket to UM, one LA line in five does not flip it to LA).
* What makes the labels realistic is therefore the *composition* of baskets: the class mix of lines
  depends on basket size (single-line baskets are 66 % MM products and 9 % XX; big baskets hold more LA
  and UM lines), on the customer's seg_1 (AZ customers' lines are LA 1.56x as often as average, BG
  customers' lines UM 1.54x as often), and varies from basket to basket. The generator draws each
  basket's class mix from a Dirichlet around ``share_by_size * segment_tilt`` (concentration fitted so
  labels by basket size match the real ones), draws each line's class from it, then a product of that
  class, and applies the rule above to the lines actually written.
* Two more real traits decide how hard the labels are to learn, and are reproduced so that a model scores
  in the same range on synthetic and real weeks (a quick LightGBM on product-profile features, trained on
  the first 75 % of weeks, tested on the rest: 89.8 % accuracy / 0.913 macro-F1 on the real weeks,
  88.0-88.8 % / 0.894-0.907 on two synthetic seeds of the same size; 99.6 % on synthetic weeks
  generated without these two traits; the tier strength moves it, ~90 % at 1.5 and ~87 % at 2.0):
  - products keep different company: across MM products, the share of LA-labelled baskets among the
    baskets holding them has sd 0.098 (0.03 if products were drawn independently). Each product has a
    "tier" and baskets leaning UM pick high tiers (`line_tiers`, strength fitted to that spread);
  - the catalogue churns: ~0.44 % of products launch and ~0.28 % are withdrawn each week (24 % of busy
    products start after the first week), so later weeks hold products never seen before.

Other figures reproduced: lines per basket (empirical, mean 6.4, median 4, max 87; no product twice in a
basket), quantity (empirical: 82 % ones, no 2s, as in the source), a stable unit price per product
(log-normal by class and popularity band, 10 % of lines at a moved price; cheap products sell by
several units), product popularity following the real rank curve of each class, a strictly
nested 4-level hierarchy, stores with a fixed format and region and format-dependent traffic, customers
with a fixed seg_1/seg_2, an activity rate and a home store (79 % of visits), 20.5 % anonymous baskets,
weekday/hour mixes, weekly volume by week of the shop year, BASKET_SIZE from the line count, BASKET_TYPE
from the size and the mission from the type (as in the real joint distribution).

Speed: NumPy per week, one process per core over weeks, polars' CSV writer, gzip level 1.

Modules: `world` (calibration, calendar, the fixed products, stores and customers), `week` (one week's
lines), `write` (files and worker processes).
"""

from .week import basket_class_mix, label_from_counts, line_classes, sample_basket_classes, week_frame
from .world import LABEL_CODES, SEG_CODES, World, build_world, load_calibration, shop_weeks, week_start
from .write import FORMATS, GenerateSummary, generate, main

__all__ = [
    "FORMATS", "LABEL_CODES", "SEG_CODES", "GenerateSummary", "World", "basket_class_mix", "build_world", "generate",
    "label_from_counts", "line_classes", "load_calibration", "main", "sample_basket_classes", "shop_weeks",
    "week_frame", "week_start",
]
