"""The reference: a prediction service the way one is commonly built by hand. Benchmark only, never shipped.

FastAPI with pydantic request models, a sync (`def`) endpoint (FastAPI runs it in its thread pool), a pandas
DataFrame built per request, the features, and a scikit-learn RandomForest loaded with joblib, called on a
DataFrame with feature names; answers through FastAPI's default JSON response.

To keep the comparison about the serving design, the features are *the same* as the product's: the
DataFrame is handed to our shared, vectorised `basket_features` (with the model archive's tables), so
this reference is no slower in featurization than the product itself at one basket per call (a hand-written
pandas featurization would be slower). It echoes `X-Request-ID` so the load driver can check each answer.

    MODEL_DIR=<extracted model archive> RF_PATH=rf.joblib uvicorn app:app --port 18000
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from retail_prediction.contract import Codes, Lines
from retail_prediction.features.tables import FeatureTables, basket_features

MODEL_DIR = Path(os.environ["MODEL_DIR"])
spec = json.loads((MODEL_DIR / "feature_spec.json").read_text())
tables = FeatureTables.load(spec, (MODEL_DIR / "tables.npz").read_bytes())
forest = joblib.load(os.environ["RF_PATH"])
CLASSES = list(tables.classes)
HIERARCHY = ["prod_code_10", "prod_code_20", "prod_code_30", "prod_code_40"]

app = FastAPI(title="reference")


class Item(BaseModel):
    product_id: str
    quantity: float
    price: float
    category: str | None = None
    prod_code_10: str | None = None
    prod_code_20: str | None = None
    prod_code_30: str | None = None
    prod_code_40: str | None = None


class Basket(BaseModel):
    basket_items: list[Item]
    customer_id: str | None = None


class Batch(BaseModel):
    baskets: list[Basket]


def to_frame(baskets: list[Basket]) -> pd.DataFrame:
    rows = [{"basket": b, **item.model_dump()} for b, basket in enumerate(baskets) for item in basket.basket_items]
    df = pd.DataFrame(rows)
    df["spend"] = df["quantity"] * df["price"]
    for col in HIERARCHY:
        df[col] = df[col].fillna(df["category"])
    return df


def codes(column: pd.Series) -> Codes:
    index, values = pd.factorize(column, use_na_sentinel=True)
    return Codes(np.asarray(values, dtype=str), index.astype(np.int32))


def features(df: pd.DataFrame, n_baskets: int) -> pd.DataFrame:
    lines = Lines(basket=df["basket"].to_numpy(np.int64), n_baskets=n_baskets, product=codes(df["product_id"]),
                  quantity=df["quantity"].to_numpy(np.float64), spend=df["spend"].to_numpy(np.float64),
                  hierarchy=tuple(codes(df[col]) for col in HIERARCHY[: len(tables.hierarchy_names)]))
    return pd.DataFrame(basket_features(lines, tables), columns=tables.feature_names())


def answer(proba: np.ndarray) -> dict:
    return {"label": CLASSES[int(np.argmax(proba))], "probabilities": dict(zip(CLASSES, proba.tolist(), strict=True))}


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
def predict(basket: Basket, request: Request, response: Response) -> dict:
    df = to_frame([basket])
    proba = forest.predict_proba(features(df, 1))[0]
    response.headers["X-Request-ID"] = request.headers.get("x-request-id", "")
    return answer(proba)


@app.post("/predict/batch")
def predict_batch(batch: Batch, request: Request, response: Response) -> dict:
    df = to_frame(batch.baskets)
    proba = forest.predict_proba(features(df, len(batch.baskets)))
    response.headers["X-Request-ID"] = request.headers.get("x-request-id", "")
    return {"predictions": [answer(p) for p in proba]}
