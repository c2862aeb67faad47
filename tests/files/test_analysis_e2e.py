"""The analysis side against a refer: the result file, status reports, user and AI comments,
the merged recommendation; the violation-type list loaded by the CLI and edited over the API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from openpyxl import Workbook

from tests.conftest import Harness
from tests.files.helpers import EventTap, KiB, fetch, parser_token, start, upload
from tests.test_cli import cli


@pytest.mark.e2e
async def test_result_comments_and_recommendation_under_one_refer(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path)
    token = await parser_token(harness)
    status, _ = await harness.api(
        "POST", "/api/v1/violation-types", json={"code": "smoking", "name": "Smoking on screen"}
    )
    assert status == 201
    view = await upload(harness, os.urandom(4 * KiB))
    file_id, refer = view["id"], view["refer"]["key"]
    async with EventTap(harness.amqp_url) as tap:
        # The parser downloads (processing), then uploads its result against the refer (ready).
        assert (await fetch(harness, refer, token))[0] == 200
        result = b'{"scenes": 12}' * 1000
        status, body = await harness.api(
            "POST",
            f"/api/v1/refers/{refer}/result",
            token=token,
            data=result,
            headers={"Content-Type": "application/json"},
        )
        assert status == 201, body
        statuses = await tap.wait_for(file_id, "status", count=2)
    assert [s["status"] for s in statuses] == ["processing", "ready"]
    async with harness.http.get(
        f"{harness.base}/api/v1/files/{file_id}/result",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == result

    # Comments from the user and the AI, each a row with a severity
    comments = [
        {"author": "user", "text": "Cigarette at 00:12", "severity": "mild"},
        {
            "author": "ai",
            "text": "Smoking detected",
            "severity": "severe",
            "violation_code": "smoking",
        },
        {"author": "ai", "text": "Nothing else", "severity": "none"},
    ]
    for comment in comments:
        status, body = await harness.api("POST", f"/api/v1/refers/{refer}/comments", json=comment)
        assert status == 201, body
    status, listed = await harness.api("GET", f"/api/v1/files/{file_id}/comments")
    assert [c["severity"] for c in listed["comments"]] == ["mild", "severe", "none"]

    # The recommendation merges them in one row and the file is db_ready.
    status, merged = await harness.api("POST", f"/api/v1/refers/{refer}/recommendation")
    assert status == 201, merged
    assert merged["user"] == "Cigarette at 00:12"
    assert merged["ai"] == "Smoking detected\nNothing else"
    assert (merged["severity"], merged["violation_codes"], merged["comments"]) == (
        "severe",
        ["smoking"],
        3,
    )
    status, shown = await harness.api("GET", f"/api/v1/files/{file_id}/recommendation")
    assert shown == merged
    status, view = await harness.api("GET", f"/api/v1/files/{file_id}")
    assert view["status"] == "db_ready"


@pytest.mark.e2e
async def test_analysis_requests_are_checked(harness: Harness, tmp_path: Path) -> None:
    await start(harness, tmp_path)
    token = await parser_token(harness)
    producer = await harness.producer_token()
    view = await upload(harness, os.urandom(KiB))
    refer = view["refer"]["key"]
    status, body = await harness.api(
        "POST",
        f"/api/v1/refers/{refer}/comments",
        json={"author": "robot", "text": "x", "severity": "awful"},
    )
    assert status == 422
    assert {d["field"] for d in body["details"]} == {"author", "severity"}
    status, body = await harness.api(
        "POST",
        f"/api/v1/refers/{refer}/comments",
        json={"author": "ai", "text": "x", "violation_code": "nope"},
    )
    assert status == 422
    assert "unknown violation type" in body["error"]
    status, body = await harness.api(
        "POST", "/api/v1/refers/nope/comments", json={"author": "ai", "text": "x"}
    )
    assert status == 404
    # Only the analysis side (a worker) or an admin uploads results and statuses.
    status, body = await harness.api(
        "POST", f"/api/v1/refers/{refer}/result", token=producer, data=b"r"
    )
    assert status == 403
    status, body = await harness.api("POST", f"/api/v1/refers/{refer}/recommendation")
    assert status == 409
    assert "no comments" in body["error"]
    # A status that skips a step is refused; an error needs a reason.
    status, body = await harness.api(
        "POST", f"/api/v1/refers/{refer}/status", token=token, json={"status": "db_ready"}
    )
    assert status == 409
    assert "none cannot become db_ready" in body["error"]
    status, body = await harness.api(
        "POST", f"/api/v1/refers/{refer}/status", token=token, json={"status": "error"}
    )
    assert status == 422
    status, body = await harness.api(
        "POST",
        f"/api/v1/refers/{refer}/status",
        token=token,
        json={"status": "error", "reason": "codec not supported"},
    )
    assert status == 200
    status, view = await harness.api("GET", f"/api/v1/files/{view['id']}")
    assert (view["status"], view["error"]) == ("error", "codec not supported")


@pytest.mark.e2e
async def test_violation_types_load_from_csv_and_xlsx_and_edit_over_the_api(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path)
    csv_file = tmp_path / "violations.csv"
    csv_file.write_text(
        "code,name,description\nsmoking,Курение,Сцены курения\nalcohol,Алкоголь,\n",
        encoding="utf-8",
    )
    code, _, err = await cli(harness, "files", "load-violations", str(csv_file))
    assert code == 0, err
    assert "2 added, 0 updated" in err

    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["Code", "Name", "Extra"])
    sheet.append(["smoking", "Курение табака", "ignored"])
    sheet.append([101, "Нецензурная брань", None])
    xlsx = tmp_path / "classification_events.xlsx"
    workbook.save(xlsx)
    code, _, err = await cli(harness, "files", "load-violations", str(xlsx))
    assert code == 0, err
    assert "1 added, 1 updated" in err

    status, body = await harness.api("GET", "/api/v1/violation-types")
    assert status == 200
    assert [(v["code"], v["name"]) for v in body["violation_types"]] == [
        ("101", "Нецензурная брань"),
        ("alcohol", "Алкоголь"),
        ("smoking", "Курение табака"),
    ]
    status, body = await harness.api(
        "PATCH", "/api/v1/violation-types/alcohol", json={"description": "Распитие"}
    )
    assert (status, body["description"]) == (200, "Распитие")
    status, _ = await harness.api("DELETE", "/api/v1/violation-types/101")
    assert status == 204
    status, body = await harness.api(
        "POST", "/api/v1/violation-types", json={"code": "alcohol", "name": "dup"}
    )
    assert status == 409
    producer = await harness.producer_token()
    status, _ = await harness.api(
        "POST", "/api/v1/violation-types", token=producer, json={"code": "x", "name": "y"}
    )
    assert status == 403

    # A file without the needed columns is refused with the reason, and nothing changes.
    bad = tmp_path / "bad.csv"
    bad.write_text("id;title\n1;x\n", encoding="utf-8")
    code, _, err = await cli(harness, "files", "load-violations", str(bad))
    assert code == 1
    assert "must name the columns 'code' and 'name'" in err
    code, _, err = await cli(harness, "files", "load-violations", str(tmp_path / "none.xlsx"))
    assert code == 1
