"""Build the docs site and look at every page in headless Chromium at 1280 px; measure its layout.

    python docs/screenshots.py                      # build, screenshot and check every page: about a minute
    python docs/screenshots.py --out shots --page quickstart --page index

For each page it writes OUT/NAME.png (the first 1280 x 900 px, what a reader sees on arrival) and
OUT/NAME-full.png (the whole page), and OUT/layout.json with what a small script measured in the page
(injected into the served copy only, which also unfolds every ??? block; the built site is unchanged):

* header: the top bar's height and whether its items sit in one row; the height of the band of the
  header's colour in the screenshot, counted in pixel rows (a navbar that wraps doubles it);
* code: for every code block its language, whether it is a captured output, whether it scrolls sideways
  (commands and text wrap, captured outputs fit; Python, YAML and TOML may scroll), whether it is highlighted
  (Pygments token spans in a colour other than the block's), whether it has a copy button;
* box tables: for every block with box-drawing characters, whether its font draws them one column
  wide (canvas measureText, which falls back per glyph like the page does) and tall enough to meet the
  next line (the glyph's ascent plus descent against the line height).

`problems(layout)` lists what is wrong; the script exits 1 when anything is. tests/test_docs_site.py
runs it (-m slow). Needs the `chromium` binary (Debian: apt-get install chromium) and Pillow.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 900
MAX_HEIGHT = 20000
ONE_ROW_PX = 64  # material's header is 2.4rem = 48 px; a second row would make it 96 px or more
BOX = "─━│┃┌┐└┘├┤┬┴┼┏┓┗┛┡┩╇┳┻╋"

PROBE = r"""
<script>
addEventListener("load", () => {
  window.foldedHeight = document.documentElement.scrollHeight;  // the page as a reader first sees it
  document.querySelectorAll("details").forEach((d) => { d.open = true; });  // measure folded outputs too
}, {once: true});
addEventListener("load", () => setTimeout(() => {
  const box = /[%BOX%]/;
  const rect = (e) => e.getBoundingClientRect();
  const header = document.querySelector(".md-header");
  const items = header ? [...header.querySelectorAll(".md-header__inner > *")]
    .filter((e) => rect(e).width > 0 && getComputedStyle(e).visibility !== "hidden") : [];
  const tops = items.map((e) => rect(e).top), bottoms = items.map((e) => rect(e).bottom);
  const tabs = document.querySelector(".md-tabs");
  const canvas = document.createElement("canvas").getContext("2d");
  const blocks = [...document.querySelectorAll(".md-content pre > code")].map((code) => {
    const wrapper = code.closest("div.highlight") || code.parentElement;
    const lang = ([...wrapper.classList].find((c) => c.startsWith("language-")) || "language-").slice(9);
    const style = getComputedStyle(code);
    const spans = [...code.querySelectorAll("span[class]")]
      .filter((s) => getComputedStyle(s).color !== style.color);
    const out = {
      lang, output: wrapper.classList.contains("output"),
      scrolls: code.scrollWidth > code.clientWidth + 1, width: code.scrollWidth, visible: code.clientWidth,
      highlighted: spans.length > 0,
      copy: !!wrapper.parentElement.querySelector(".md-clipboard, .md-code__button"),
      first: code.textContent.split("\n")[0].slice(0, 80),
    };
    if (box.test(code.textContent)) {
      canvas.font = `${style.fontSize} ${style.fontFamily}`;
      const m = canvas.measureText("M").width;
      const chars = [...new Set(code.textContent.match(new RegExp(box.source, "g")))];
      const odd = chars.filter((c) => Math.abs(canvas.measureText(c).width - m) > 0.05);
      const bar = canvas.measureText("│");
      const lineHeight = parseFloat(style.lineHeight) || 1.2 * parseFloat(style.fontSize);
      Object.assign(out, {
        box: true, font: style.fontFamily, odd_width: odd.join(""),
        glyph_height: bar.actualBoundingBoxAscent + bar.actualBoundingBoxDescent, line_height: lineHeight,
      });
    }
    return out;
  });
  const result = {
    title: document.title,
    header_height: header ? rect(header).height : null,
    header_rows_spread: items.length ? Math.max(...bottoms) - Math.min(...tops) : null,
    header_item_height: items.length ? Math.max(...items.map((e) => rect(e).height)) : null,
    tabs_visible: !!(tabs && rect(tabs).height > 0 && getComputedStyle(tabs).display !== "none"),
    search: !!document.querySelector(".md-search"),
    page_height: window.foldedHeight,
    page_scrolls_sideways: document.documentElement.scrollWidth > innerWidth + 1,
    content_width: (document.querySelector(".md-content") || document.body).clientWidth,
    blocks,
  };
  const pre = document.createElement("pre");
  pre.id = "layout-probe";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
}, 300));
</script>
""".replace("%BOX%", BOX)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the built site; `?probe` on a page adds the measuring script to the served copy."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        path, _, query = self.path.partition("?")
        if query != "probe":
            return super().do_GET()
        local = Path(self.translate_path(path))
        if local.is_dir():
            local = local / "index.html"
        body = local.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def browser(binary: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
             "--run-all-compositor-stages-before-draw", "--virtual-time-budget=4000"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="llmforge-chromium-") as profile:
        return subprocess.run(
            [binary, *flags, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout
        )


def build(site: Path) -> None:
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(site)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}")


def pages(site: Path) -> list[str]:
    """Page names ('index', 'quickstart', 'reference/cli') of the built site."""
    found = []
    for html in sorted(site.rglob("index.html")):
        name = str(html.parent.relative_to(site)) if html.parent != site else "index"
        if not name.startswith(("assets", "search")):
            found.append(name)
    return found


def header_band(png: Path) -> int:
    """Pixel rows from the top whose colour is the header's (sampled at the top row, right of the title)."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    x = image.width // 2
    colour = image.getpixel((x, 1))
    rows = 0
    for y in range(image.height):
        same = sum(_close(image.getpixel((xx, y)), colour) for xx in range(x - 200, x + 200, 20))
        if same < 15:  # of 20 samples: text and icons may cover a few
            break
        rows += 1
    return rows


def _close(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return all(abs(p - q) <= 12 for p, q in zip(a, b, strict=True))


def shoot(binary: str, base: str, page: str, out: Path) -> dict:
    url = f"{base}/" if page == "index" else f"{base}/{page}/"
    done = browser(binary, f"--window-size={WIDTH},{HEIGHT}", "--dump-dom", url + "?probe")
    m = re.search(r'<pre id="layout-probe">(.*?)</pre>', done.stdout, re.S)
    if not m:
        raise RuntimeError(f"{page}: the probe wrote nothing (chromium: {done.stderr[-800:]})")
    import html

    layout = json.loads(html.unescape(m.group(1)))
    stem = page.replace("/", "-")
    full = out / f"{stem}-full.png"
    height = min(max(layout["page_height"], HEIGHT), MAX_HEIGHT)
    done = browser(binary, f"--window-size={WIDTH},{height}", f"--screenshot={full}", url)
    if not full.exists():
        raise RuntimeError(f"{page}: no screenshot (chromium: {done.stderr[-800:]})")
    from PIL import Image

    Image.open(full).crop((0, 0, WIDTH, HEIGHT)).save(out / f"{stem}.png")
    layout["header_band_px"] = header_band(out / f"{stem}.png")
    return layout


def problems(layout: dict[str, dict]) -> list[str]:
    found = []
    for page, info in layout.items():
        if info["header_height"] is None or info["header_height"] > ONE_ROW_PX:
            found.append(f"{page}: the header is {info['header_height']} px high (one row is at most {ONE_ROW_PX})")
        if info["header_rows_spread"] and info["header_rows_spread"] > info["header_item_height"] + 1:
            found.append(f"{page}: the header's items are in more than one row")
        if info["tabs_visible"]:
            found.append(f"{page}: a tabs row under the header")
        if info["header_band_px"] > ONE_ROW_PX:
            found.append(f"{page}: {info['header_band_px']} pixel rows of header colour (one row is about 48)")
        if info["page_scrolls_sideways"]:
            found.append(f"{page}: the page scrolls sideways")
        if not info["search"]:
            found.append(f"{page}: no search box")
        for block in info["blocks"]:
            what = f"{page}: {block['lang'] or 'plain'} block {block['first']!r}"
            if block["output"]:
                what = f"{page}: captured output {block['first']!r}"
            if block["scrolls"] and block["lang"] in ("text", "bash", "sh", "console"):  # code may scroll
                found.append(f"{what} scrolls sideways ({block['width']} px in {block['visible']})")
            if block["lang"] in ("python", "yaml", "toml") and not block["highlighted"]:  # a bash line may be all words
                found.append(f"{what} is not highlighted")
            if not block["copy"]:
                found.append(f"{what} has no copy button")
            if block.get("box"):
                if block["odd_width"]:
                    found.append(
                        f"{what}: box glyphs {block['odd_width']!r} are not one column wide in {block['font']}"
                    )
                if block["glyph_height"] + 0.5 < block["line_height"]:
                    found.append(
                        f"{what}: a gap between the lines of a table (glyph {block['glyph_height']:.1f} px, "
                        f"line {block['line_height']:.1f} px)"
                    )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "llmforge-docs-screenshots",
                        help="default: TMPDIR/llmforge-docs-screenshots")  # fmt: skip
    parser.add_argument("--site", type=Path, help="an already built site (default: build one into a temp dir)")
    parser.add_argument("--page", action="append", help="only these pages (index, quickstart, reference/cli, ...)")
    args = parser.parse_args(argv)
    binary = chromium()
    if binary is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmforge-site-") as tmp:
        site = args.site or Path(tmp) / "site"
        if args.site is None:
            build(site)
        server, base = serve(site)
        try:
            layout = {page: shoot(binary, base, page, args.out) for page in (args.page or pages(site))}
        finally:
            server.shutdown()
    (args.out / "layout.json").write_text(json.dumps(layout, indent=1) + "\n")
    found = problems(layout)
    for line in found:
        print(line)
    print(f"{len(layout)} pages in {args.out}: " + (f"{len(found)} problems" if found else "no layout problems"))
    return 1 if found else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
