"""A local fake of the hub's dataset file API (`/datasets/<repo>/resolve/<revision>/<path>`), for the fetcher's
tests, and the hub's form of every data set, written from the rows our loaders read from the real folder."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from structprune import datafetch


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    requests: list[str]
    truncate: set[str]

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.end_headers()

    def do_GET(self):
        prefix = "/datasets/"
        path = urllib.parse.unquote(self.path.split("?")[0])
        self.requests.append(path)
        if not path.startswith(prefix) or "/resolve/" not in path:
            self.send_error(404)
            return
        repo, rest = path[len(prefix):].split("/resolve/", 1)
        revision_and_file = rest.split("/")
        # The revision may itself hold slashes (refs/convert/parquet): try the longest that exists.
        for cut in range(len(revision_and_file) - 1, 0, -1):
            local = self.root / repo / "/".join(revision_and_file[:cut]) / "/".join(revision_and_file[cut:])
            if local.is_file():
                break
        else:
            self.send_error(404)
            return
        body = local.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in self.truncate:  # the connection drops half-way
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextmanager
def fake_hub(root: Path, truncate: set[str] = frozenset()):
    """Serve `root/<repo>/<revision>/<path>` on 127.0.0.1; yields (endpoint, list of requested paths)."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"root": root, "requests": requests, "truncate": set(truncate)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def hub_path(root: Path, hub_file: datafetch.HubFile) -> Path:
    path = root / hub_file.repo / hub_file.revision / hub_file.path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_parquet(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def hub_form(source: datafetch.Source, folder: Path, root: Path) -> None:
    """Write what the hub serves for `source`, in the hub's own form, from the rows of the real folder."""
    rows = datafetch.loader_rows(source.rows, folder)
    target = hub_path(root, source.hub[0])
    name = source.name
    if name.startswith("wikitext2"):
        write_parquet(target, [{"text": r} for r in rows])
    elif name.startswith("ptb"):  # the hub's loader strips each line
        write_parquet(target, [{"sentence": r.strip()} for r in rows])
    elif name == "bookcorpus-head":  # more rows than the head
        write_parquet(target, [{"text": r} for r in rows] + [{"text": "rows past the head ."}] * 3)
    elif name == "c4-validation":  # the sample's documents among others, shuffled, in the shard's json.gz
        import pyarrow.parquet as pq_

        documents = pq_.read_table(folder / "c4/c4_validation_2k.parquet").to_pylist()
        others = [{"text": f"another document {i}", "url": f"u{i}", "timestamp": "t"} for i in range(50)]
        mixed = others[:25] + documents[::-1] + others[25:]
        with gzip.open(target, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(d) + "\n" for d in mixed)
    elif name in ("boolq", "piqa", "winogrande", "arc-easy", "arc-challenge", "openbookqa"):
        write_parquet(target, rows)
    elif name == "hellaswag":
        write_parquet(target, [{"activity_label": r["context"].split(": ", 1)[0],
                                "ctx": r["context"].split(": ", 1)[1], "label": str(r["label"]),
                                "endings": r["endings"]} for r in rows])
    elif name == "alpaca-cleaned":
        target.write_text(json.dumps(rows + [{"instruction": "past the subset", "input": "", "output": ""}]))
    else:
        raise ValueError(f"no hub form for {name}")
