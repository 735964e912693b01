"""Run glance_store's own RBD driver once, as Glance does; executed by the glance-rbd venv.

Not a test module and not imported by the tests: ``tests.ceph.GlanceStoreRbd``
runs ``<venv>/bin/python tests/glance_store_rbd.py '<json request>'``. The
request holds ``op`` and ``config`` (``[glance_store]`` options). Answers one
JSON object on stdout; a glance_store exception becomes
``{"error": "<class name>", "message": "..."}`` (exit 0), anything else a
traceback (exit 1).

* ``add``: ``add_to_backend_with_multihash(CONF, image_id, <stdin>, size,
  hashing_algorithm)`` (glance_store/backend.py; what Glance's upload calls) ->
  ``{location, size, checksum, multihash, metadata}``.
* ``delete``: ``delete_from_backend(location)`` (Glance's image delete).
* ``get``: ``get_from_backend(location)`` -> ``{size, md5, sha512}`` of the bytes read.
"""

from __future__ import annotations

import hashlib
import json
import sys


def main() -> int:
    request = json.loads(sys.argv[1])
    import glance_store
    from glance_store import exceptions
    from oslo_config import cfg

    conf = cfg.CONF
    glance_store.register_opts(conf)
    conf([], project="glance", default_config_files=[], default_config_dirs=[])
    conf.set_override("stores", ["rbd"], group="glance_store")
    conf.set_override("default_store", "rbd", group="glance_store")
    for name, value in request["config"].items():
        conf.set_override(name, value, group="glance_store")
    glance_store.create_stores(conf)
    glance_store.verify_default_store()

    op = request["op"]
    try:
        if op == "add":
            location, size, checksum, multihash, metadata = (
                glance_store.add_to_backend_with_multihash(
                    conf, request["image_id"], sys.stdin.buffer, request["size"],
                    request["hashing_algorithm"],
                )
            )  # fmt: skip
            answer = {
                "location": location, "size": size, "checksum": checksum,
                "multihash": multihash, "metadata": metadata,
            }  # fmt: skip
        elif op == "delete":
            glance_store.delete_from_backend(request["location"])
            answer = {"deleted": request["location"]}
        elif op == "get":
            chunks, size = glance_store.get_from_backend(request["location"])
            md5, sha512, read = hashlib.md5(), hashlib.sha512(), 0
            for chunk in chunks:
                md5.update(chunk)
                sha512.update(chunk)
                read += len(chunk)
            answer = {"size": read, "reported_size": size, "md5": md5.hexdigest(),
                      "sha512": sha512.hexdigest()}  # fmt: skip
        else:
            raise SystemExit(f"unknown op {op!r}")
    except exceptions.GlanceStoreException as exc:
        answer = {"error": type(exc).__name__, "message": str(exc)}
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
