"""The contract an integrator reads: /docs served without a CDN."""

from __future__ import annotations

import re

import httpx
import pytest

# -- /docs without a CDN ----------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_assets_the_app_serves(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    html = response.text
    urls = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html)
    urls += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)
    assert urls and "/openapi.json" in urls
    assert not re.search(r"https?://|//cdn", html), "no outside URL"
    for url in urls:
        assert url.startswith("/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts
    for url in scripts:
        body = (await client.get(url)).content
        assert b"SwaggerUIBundle" in body or b"Redoc" in body, url
