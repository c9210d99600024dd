"""The dunnhumby "Let's Get Sort-of-Real" transaction schema: columns, header aliases, code maps, labels.

This module describes the *file format* only. Nothing here is used by the model to decide a class:
everything the model knows is learned by `train` from the data it is given.
"""

from __future__ import annotations

# Column names as they appear in the current header of the data set.
SHOP_WEEK = "SHOP_WEEK"
SHOP_DATE = "SHOP_DATE"
SHOP_WEEKDAY = "SHOP_WEEKDAY"
SHOP_HOUR = "SHOP_HOUR"
QUANTITY = "QUANTITY"
SPEND = "SPEND"
PROD_CODE = "PROD_CODE"
PROD_CODE_10 = "PROD_CODE_10"
PROD_CODE_20 = "PROD_CODE_20"
PROD_CODE_30 = "PROD_CODE_30"
PROD_CODE_40 = "PROD_CODE_40"
CUST_CODE = "CUST_CODE"
CUST_PRICE_SENSITIVITY = "seg_1"
CUST_LIFESTAGE = "seg_2"
BASKET_ID = "BASKET_ID"
BASKET_SIZE = "BASKET_SIZE"
LABEL = "BASKET_PRICE_SENSITIVITY"
BASKET_TYPE = "BASKET_TYPE"
BASKET_DOMINANT_MISSION = "BASKET_DOMINANT_MISSION"
STORE_CODE = "STORE_CODE"
STORE_FORMAT = "STORE_FORMAT"
STORE_REGION = "STORE_REGION"

ALL_COLUMNS: tuple[str, ...] = (
    SHOP_WEEK, SHOP_DATE, SHOP_WEEKDAY, SHOP_HOUR, QUANTITY, SPEND,
    PROD_CODE, PROD_CODE_10, PROD_CODE_20, PROD_CODE_30, PROD_CODE_40,
    CUST_CODE, CUST_PRICE_SENSITIVITY, CUST_LIFESTAGE, BASKET_ID, BASKET_SIZE, LABEL,
    BASKET_TYPE, BASKET_DOMINANT_MISSION, STORE_CODE, STORE_FORMAT, STORE_REGION,
)  # fmt: skip

# The product hierarchy, finest level first (each level strictly nests in the next).
HIERARCHY: tuple[str, ...] = (PROD_CODE_10, PROD_CODE_20, PROD_CODE_30, PROD_CODE_40)

# Columns a training file must have; the rest are optional and ignored when absent.
REQUIRED_FOR_TRAINING: tuple[str, ...] = (SHOP_WEEK, QUANTITY, SPEND, PROD_CODE, BASKET_ID, LABEL)
# Columns needed to score baskets (no label).
REQUIRED_FOR_SCORING: tuple[str, ...] = (QUANTITY, SPEND, PROD_CODE, BASKET_ID)

# Columns read as strings whatever they look like: IDs and codes.
STRING_COLUMNS: tuple[str, ...] = (
    PROD_CODE, *HIERARCHY, CUST_CODE, CUST_PRICE_SENSITIVITY, CUST_LIFESTAGE, BASKET_ID,
    BASKET_SIZE, LABEL, BASKET_TYPE, BASKET_DOMINANT_MISSION, STORE_CODE, STORE_FORMAT, STORE_REGION,
)  # fmt: skip
INTEGER_COLUMNS: tuple[str, ...] = (SHOP_WEEK, SHOP_DATE, SHOP_WEEKDAY, SHOP_HOUR)
FLOAT_COLUMNS: tuple[str, ...] = (QUANTITY, SPEND)

# Identifier columns that a spreadsheet can mangle into scientific notation ("9.94E+14").
ID_COLUMNS: tuple[str, ...] = (BASKET_ID, CUST_CODE, PROD_CODE, STORE_CODE)

# What a spreadsheet makes of a long numeric identifier: 9.94E+14, 9,94E+14, 9.94e14.
SCIENTIFIC_ID_PATTERN = r"^\s*[0-9]+([.,][0-9]+)?[eE][+]?[0-9]+\s*$"

# Older downloads of the data set name two columns differently and use other codes.
HEADER_ALIASES: dict[str, str] = {
    "CUST_PRICE_SENSITIVITY": CUST_PRICE_SENSITIVITY,
    "CUST_LIFESTAGE": CUST_LIFESTAGE,
}
# Old-header values -> current codes, per column.
OLD_HEADER_CODES: dict[str, dict[str, str]] = {
    CUST_PRICE_SENSITIVITY: {"LA": "AZ", "MM": "CT", "UM": "BG", "XX": "DY"},
    CUST_LIFESTAGE: {"OA": "CZ", "OF": "EQ", "OT": "BU", "PE": "FN", "YA": "AT", "YF": "DI"},
}

# The labels the data set defines, with readable names for people (the model learns its own class list
# from the training data; these are the values a file may legally contain).
LABELS: tuple[str, ...] = ("LA", "MM", "UM", "XX")
LABEL_NAMES: dict[str, str] = {
    "LA": "Less affluent",
    "MM": "Mid market",
    "UM": "Up market",
    "XX": "Unclassified",
}


def label_name(label: str) -> str:
    """A readable name for a class label (the label itself when the schema does not know it)."""
    return LABEL_NAMES.get(label, label)
