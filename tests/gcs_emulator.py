"""gcp-storage-emulator with Cloud Storage's generation preconditions (``ifGenerationMatch``).

    .venv/bin/python tests/gcs_emulator.py start --host 127.0.0.1 --port 9023 --in-memory --quiet

gcp-storage-emulator (2026.7) accepts ``ifGenerationMatch`` on uploads and downloads but does
not check it; Cloud Storage answers ``412 Precondition Failed`` when the object's current
generation differs (``0``: the object must not exist). The published store's create-only
writes and the compare-and-swap of ``latest.json`` depend on exactly that answer, so the
test fixtures run the emulator with that check added in front of its upload and download
handlers — everything else is the emulator as installed. The emulator serves one request at
a time (``http.server.HTTPServer``), so the check and the write it guards cannot interleave
with another request, as on the real service.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

PRECONDITION_FAILED = {"error": {"code": 412, "message": "At least one of the pre-conditions you "
                                 "specified did not hold.",
                                 "errors": [{"reason": "conditionNotMet", "domain": "global",
                                             "locationType": "header", "location": "If-Match"}]}}


def _generation(storage, bucket: str, name: str) -> int:
    try:
        return int(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return 0


def _refused(request, response, storage, bucket: str | None, name: str | None) -> bool:
    """Answer 412 (and return True) when the request's ifGenerationMatch does not hold."""
    wanted = request.query.get("ifGenerationMatch")
    if not wanted or bucket is None or name is None:
        return False
    if _generation(storage, bucket, name) == int(wanted[0]):
        return False
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json(PRECONDITION_FAILED)
    return True


def _upload_target(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    upload_type = (request.query.get("uploadType") or [""])[0]
    data = request.data
    if upload_type == "multipart":
        return data["meta"].get("name")
    if upload_type == "resumable" and isinstance(data, dict):
        return data.get("name")
    return None


def _guard(handler, target):
    def guarded(request, response, storage, *args, **kwargs):
        bucket, name = target(request, storage)
        if _refused(request, response, storage, bucket, name):
            return None
        return handler(request, response, storage, *args, **kwargs)

    guarded.__name__ = handler.__name__
    return guarded


def _resumable_target(request, storage) -> tuple[str | None, str | None]:
    try:
        obj = storage.get_resumable_file_obj(request.query["upload_id"][0])
    except (NotFound, KeyError):
        return None, None
    return obj.get("bucket"), obj.get("name")


def install() -> None:
    """Put the precondition check in front of the emulator's upload and download handlers.

    Must run before ``gcp_storage_emulator.server`` is imported (its route table holds the
    handler functions themselves).
    """
    objects.insert = _guard(objects.insert, lambda r, s: (r.params["bucket_name"], _upload_target(r)))
    # Resumable uploads carry the creation request's query (Location = its URL + upload_id).
    objects.upload_partial = _guard(objects.upload_partial, _resumable_target)
    objects.download = _guard(objects.download,
                              lambda r, s: (r.params["bucket_name"], r.params["object_id"]))


if __name__ == "__main__":
    install()
    from gcp_storage_emulator.__main__ import main

    sys.exit(main(sys.argv[1:]))
