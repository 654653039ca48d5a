"""/docs and /redoc work with no internet: their pages load scripts and styles only from the server itself."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from server.app import build_app
from server.settings import Settings

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_need_no_cdn(make_settings: Callable[..., Settings], page: str) -> None:
    with TestClient(build_app(make_settings())) as client:
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assets = [a or b for a, b in ASSET.findall(html.text)]
        scripts = [a for a in assets if a.endswith(".js")]
        assert scripts, html.text
        for asset in assets:
            assert not re.match(r"(https?:)?//", asset), f"{page} loads {asset} from another host"
            if asset.startswith("/") and not asset.endswith("openapi.json"):
                fetched = client.get(asset)
                assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
        assert client.get("/openapi.json").status_code == 200


def test_the_assets_need_a_key_when_the_docs_do(make_settings: Callable[..., Settings]) -> None:
    key = "k" * 24
    with TestClient(build_app(make_settings(server={"api_keys": [key]}))) as client:
        assert client.get("/docs").status_code == 401
        assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 401
        page = client.get("/docs", headers={"X-API-Key": key})
        assert page.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in page.text
