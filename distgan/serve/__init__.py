"""`distgan-serve`: an exported generator behind a web page and an HTTP API, torch-free.

`catalog.py` loads and describes the models, `query.py` parses request parameters
strictly, `app.py` is the Starlette application (API, static page, limits, headers),
`cli.py` the command, `nearest.py` the training-set look-up of `--data`, `proxy.py` the
nginx recipe. The page is plain HTML/JS/CSS in `static/`, shipped as package
data, and loads nothing from any other host. Needs the `serve` extra (starlette, uvicorn).
"""
