"""What each `/api/*` path answers (and /healthz): `Endpoints`, holding the served models, the limits and the
nearest-image indexes, one method per path. `distgan.serve.app` puts them in its route table behind Guard.

    GET /api/models        every model         GET /api/sample       images (PNG grid, npy, or JSON)
    GET /api/meta          one model, in full  GET /api/interpolate  a walk between two seeds
    GET /api/mixing        a style-mixing grid GET /api/nearest      a sample's nearest training images (--data)
    GET /api/stages        a pyramid model's stages of one sample
    POST /api/upscale      a PNG/JPEG body through an SR model (JSON)
    GET /healthz           liveness

A bad parameter is an `InputError` naming it and its valid range (app.py's handler makes it a 400). No
response header grows with the request: the seeds, labels and the command are in the JSON body
(`format=json`) and in the PNG's text chunks.
Endpoints are plain methods, run in Starlette's thread pool: onnxruntime releases the GIL and its sessions
take concurrent calls.
"""

from __future__ import annotations

import base64
import io
import shlex
import sys
from typing import Any
from urllib.parse import urlencode

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from distgan.runtime import ALL_CLASSES, MAX_SEED, PSI_RANGE, Drawing, InputError
from distgan.serve.catalog import Limits, ServedModel, ServedUpscaler, limits_json
from distgan.serve.nearest import NearestIndex
from distgan.serve.query import Query
from distgan.serve.upscaling import upscale_upload

SAMPLE_PARAMS = ("model", "seed", "n", "class", "psi", "format")
WALK_PARAMS = ("model", "seed_a", "seed_b", "steps", "class", "psi", "format")
NEAREST_PARAMS = ("model", "seed", "class", "psi", "k")
MIXING_PARAMS = ("model", "row_seed", "rows", "col_seed", "cols", "mix_layer", "class", "psi", "format")
STAGES_PARAMS = ("model", "seed", "class", "psi", "format")
UPSCALE_PARAMS = ("model", "name")
FORMATS = ("png", "npy", "json")
MAX_NEIGHBOURS = 16


def sample_command(model: ServedModel, drawing: Drawing) -> str:
    """The shell line that writes the same PNG: this interpreter by its absolute path, so it runs in a fresh shell
    without the server's PATH."""
    return shlex.join([sys.executable, "-m", "distgan.sample", "--onnx", str(model.generator.path), *drawing.args,
                       "--grid", drawing.name])


def pixels_json(images: np.ndarray) -> dict[str, Any]:
    """uint8 images as JSON: shape and base64 of the raw bytes (row-major)."""
    return {"shape": list(images.shape), "pixels": base64.b64encode(np.ascontiguousarray(images)).decode("ascii")}


def drawing_response(request: Request, model: ServedModel, drawing: Drawing, form: str,
                     shape: tuple[int, ...], view: dict[str, str]) -> Response:
    """The drawing as PNG (what every client writes), npy (uint8 `shape`) or JSON (pixels, seeds, labels, the
    command, the page's link to this view). Headers stay short whatever the request: the rest is in the body."""
    headers = {"x-distgan-columns": str(drawing.columns), "x-distgan-filename": drawing.name}
    if form == "png":
        headers["content-disposition"] = f'inline; filename="{drawing.name}"'
        return Response(drawing.png(), media_type="image/png", headers=headers)
    if form == "npy":
        buffer = io.BytesIO()
        np.save(buffer, drawing.images.reshape(shape), allow_pickle=False)
        headers["content-disposition"] = f'attachment; filename="{drawing.name.removesuffix(".png")}.npy"'
        return Response(buffer.getvalue(), media_type="application/octet-stream", headers=headers)
    root = request.scope.get("root_path", "")
    return JSONResponse({
        **pixels_json(drawing.images.reshape(shape)), "seeds": drawing.seeds.tolist(),
        "labels": None if drawing.labels is None else drawing.labels.tolist(), "columns": drawing.columns,
        "filename": drawing.name, "command": sample_command(model, drawing), "text": drawing.text,
        "link": f"{root}/?{urlencode(view)}",
    })


def view_of(query: Query, names: dict[str, str]) -> dict[str, str]:
    """The page's URL parameters for this request (`names`: API name -> page name)."""
    return {page: query.values[api] for api, page in names.items() if api in query.values}


class Endpoints:
    """The `/api/*` answers for `served` (the first generator and the first super-resolution model are their
    endpoints' default) within `limits`; `nearest`: a model id's index of training images (distgan-serve --data)."""

    def __init__(self, served: list[ServedModel | ServedUpscaler], limits: Limits,
                 nearest: dict[str, NearestIndex] | None = None):
        self.served_count = len(served)
        self.models = [m for m in served if isinstance(m, ServedModel)]
        self.upscalers = {m.id: m for m in served if isinstance(m, ServedUpscaler)}
        self.by_id = {m.id: m for m in self.models}
        self.limits = limits
        self.nearest = nearest or {}

    def pick(self, query: Query) -> ServedModel:
        """The generator `model` names (the first served when not given)."""
        name = query.text("model", self.models[0].id if self.models else None)
        if name in self.upscalers:
            raise InputError("model", f"{name!r} is a super-resolution model: POST an image to api/upscale; "
                                      f"generators: {', '.join(self.by_id) or 'none served'}")
        if name not in self.by_id:
            valid = f"valid: {', '.join(self.by_id)}" if self.by_id else "no generator is served"
            raise InputError("model", f"{'no model given' if name is None else repr(name) + ' is not served'}; "
                                      f"{valid}")
        return self.by_id[name]

    def pick_upscaler(self, query: Query) -> ServedUpscaler:
        """The super-resolution model `model` names (the first served when not given)."""
        name = query.text("model", next(iter(self.upscalers), None))
        if name in self.by_id:
            raise InputError("model", f"{name!r} is a generator, not a super-resolution model; valid: "
                                      f"{', '.join(self.upscalers) or 'none served'}")
        if name not in self.upscalers:
            valid = f"valid: {', '.join(self.upscalers)}" if self.upscalers else "no super-resolution model is served"
            raise InputError("model", f"{'no model given' if name is None else repr(name) + ' is not served'}; "
                                      f"{valid}")
        return self.upscalers[name]

    def common(self, query: Query, field: str, count: int, low: int) -> tuple[ServedModel, str | None, float, str]:
        """model, class, psi and format; and the images `count` (n or steps) makes within --max-images."""
        model = self.pick(query)
        class_name = query.text("class")
        psi = query.number("psi", 1.0, *PSI_RANGE)
        form = query.choice("format", "png", FORMATS)
        every = class_name is not None and class_name.lower() == ALL_CLASSES and model.generator.conditional
        per_row = model.generator.info.num_classes if every else 1  # class=all: every class per seed or walk
        most = self.limits.max_images
        if count * per_row > most:
            raise InputError(field, f"{count} x {per_row} classes (class=all) is {count * per_row} images; the limit "
                                    f"is {most} (--max-images): valid {field} {low}..{max(most // per_row, low)}")
        return model, class_name, psi, form

    def sample(self, request: Request) -> Response:
        """GET /api/sample: `n` images from `seed` on."""
        query = Query(request.query_params.multi_items(), SAMPLE_PARAMS)
        seed = query.integer("seed", 0, 0, MAX_SEED)
        n = query.integer("n", 1, 1, self.limits.max_n)
        model, class_name, psi, form = self.common(query, "n", n, 1)
        drawing = model.generator.sample(seed, n, class_name, psi)
        view = view_of(query, {"model": "model", "seed": "seed", "n": "n", "class": "class", "psi": "psi"})
        return drawing_response(request, model, drawing, form, drawing.images.shape, view)

    def interpolate(self, request: Request) -> Response:
        """GET /api/interpolate: a walk of `steps` images from seed_a to seed_b."""
        query = Query(request.query_params.multi_items(), WALK_PARAMS)
        seed_a = query.integer("seed_a", 0, 0, MAX_SEED)
        seed_b = query.integer("seed_b", 1, 0, MAX_SEED)
        steps = query.integer("steps", 16, 2, self.limits.max_steps)
        model, class_name, psi, form = self.common(query, "steps", steps, 2)
        drawing = model.generator.interpolate(seed_a, seed_b, steps, class_name, psi)
        rows = len(drawing.images) // steps
        view = view_of(query, {"model": "model", "seed_a": "seed_a", "seed_b": "seed_b", "steps": "steps",
                               "class": "walk_class", "psi": "psi"})
        return drawing_response(request, model, drawing, form, (rows, steps, *drawing.images.shape[1:]), view)

    def nearest_images(self, request: Request) -> Response:
        """GET /api/nearest: one sample and its `k` nearest training images (JSON)."""
        query = Query(request.query_params.multi_items(), NEAREST_PARAMS)
        model = self.pick(query)
        if model.id not in self.nearest:
            raise InputError("model", f"{model.id!r} has no training-set index (start distgan-serve with --data DIR "
                                      f"holding images of its shape)")
        seed = query.integer("seed", 0, 0, MAX_SEED)
        class_name = query.text("class")
        if class_name is not None and class_name.lower() == ALL_CLASSES:
            raise InputError("class", "one class per image here: a name or index")
        psi = query.number("psi", 1.0, *PSI_RANGE)
        k = query.integer("k", 8, 1, MAX_NEIGHBOURS)
        drawing = model.generator.sample(seed, 1, class_name, psi)
        index = self.nearest[model.id]
        found = index.query(drawing.images[0], k)
        return JSONResponse({**index.describe(), "query": pixels_json(drawing.images),
                             "neighbours": {**pixels_json(index.images(found.indices)),
                                            "indices": found.indices.tolist(), "distances": found.distances.tolist(),
                                            "labels": index.labels[found.indices].tolist()}})

    def mixing(self, request: Request) -> Response:
        """GET /api/mixing, style-based models: the style-mixing grid (`OnnxGenerator.mixing_grid`),
        (rows + 1) x (cols + 1) tiles."""
        query = Query(request.query_params.multi_items(), MIXING_PARAMS)
        row_seed = query.integer("row_seed", 0, 0, MAX_SEED)
        rows = query.integer("rows", 3, 1, self.limits.max_n)
        col_seed = query.integer("col_seed", 100, 0, MAX_SEED)
        cols = query.integer("cols", 4, 1, self.limits.max_n)
        mix_layer = query.integer("mix_layer", 4, 0, MAX_SEED)  # the model's own range is checked when drawn
        model, class_name, psi, form = self.common(query, "rows", (rows + 1) * (cols + 1), 1)
        drawing = model.generator.mixing_grid(row_seed, rows, col_seed, cols, mix_layer, class_name, psi)
        view = view_of(query, {"model": "model"})  # the page's URL keeps the model; the card's fields are its own
        return drawing_response(request, model, drawing, form, (rows + 1, cols + 1, *drawing.images.shape[1:]), view)

    def stages(self, request: Request) -> Response:
        """GET /api/stages, pyramid models (LAPGAN): one seed's stages, coarse to fine, side by side
        (`OnnxGenerator.stage_grid`), as a [1, stages] grid; a model without stage outputs is a 400 naming `model`."""
        query = Query(request.query_params.multi_items(), STAGES_PARAMS)
        model = self.pick(query)
        seed = query.integer("seed", 0, 0, MAX_SEED)
        class_name = query.text("class")
        psi = query.number("psi", 1.0, *PSI_RANGE)
        form = query.choice("format", "png", FORMATS)
        drawing = model.generator.stage_grid(seed, class_name, psi)
        view = view_of(query, {"model": "model"})  # as /api/mixing: the card's fields are its own
        return drawing_response(request, model, drawing, form, (1, *drawing.images.shape), view)

    async def upscale(self, request: Request) -> Response:
        """POST /api/upscale: a PNG/JPEG body through an SR model (`distgan.serve.upscaling`): bicubic and SR PNGs,
        the crop to zoom. The body is read here (Guard counts it); the work runs in the thread pool like every other
        endpoint's."""
        query = Query(request.query_params.multi_items(), UPSCALE_PARAMS)
        model = self.pick_upscaler(query)
        name = query.text("name")
        body = await request.body()
        answer = await run_in_threadpool(upscale_upload, model, body, self.limits.max_upscale_pixels, name)
        return JSONResponse(answer)

    def meta(self, request: Request) -> Response:
        """GET /api/meta: one generator in full, the limits and its nearest-image index (or null)."""
        model = self.pick(Query(request.query_params.multi_items(), ("model",)))
        described = {**model.describe(full=True), "limits": limits_json(self.limits)}
        nearest = self.nearest[model.id].describe() if model.id in self.nearest else None
        return JSONResponse({**described, "nearest": nearest})

    def model_list(self, request: Request) -> Response:
        """GET /api/models: every generator and super-resolution model, and the limits (no parameters)."""
        Query(request.query_params.multi_items(), ())
        return JSONResponse({"models": [m.describe() for m in self.models],
                             "upscalers": [m.describe() for m in self.upscalers.values()],
                             "limits": limits_json(self.limits)})

    def healthz(self, request: Request) -> Response:
        """GET /healthz: liveness and the number of models served."""
        return JSONResponse({"status": "ok", "models": self.served_count})
