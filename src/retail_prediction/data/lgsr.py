"""The dunnhumby "Let's Get Sort-of-Real" transaction schema: columns, header aliases, code maps.

This module describes the *file format* only. Nothing here is used by the model to decide a class:
everything the model knows is learned by `train` from the data it is given.
"""

from __future__ import annotations

from ..contract import HIERARCHY

# Column names as they appear in the current header of the data set.
SHOP_WEEK = "SHOP_WEEK"
SHOP_DATE = "SHOP_DATE"
SHOP_WEEKDAY = "SHOP_WEEKDAY"
SHOP_HOUR = "SHOP_HOUR"
QUANTITY = "QUANTITY"
SPEND = "SPEND"
PROD_CODE = "PROD_CODE"
PROD_CODE_10, PROD_CODE_20, PROD_CODE_30, PROD_CODE_40 = HIERARCHY
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

