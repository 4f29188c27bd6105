"""``python -m mhaexp.data.render_text OUT_DIR``: the synthetic grammar as plain .txt files, offline.

Real-looking text for ``data=text`` without a download::

    python -m mhaexp.data.render_text corpus/ --sentences 200000
    mhaexp-train experiment=text_small data.path=corpus/
"""

from __future__ import annotations

from mhaexp.data.grammar import TEXT_STYLES, render_text
from mhaexp.errors import ArgumentParser


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m mhaexp.data.render_text", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", help="directory to write part-00000.txt ... into (created)")
    p.add_argument("--sentences", type=int, default=200_000, help="sentences in all (default 200000, ~11 MB)")
    p.add_argument("--files", type=int, default=10, help="files to spread them over (each one document)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", choices=TEXT_STYLES, default="prose", help="prose: paragraphs; plain: CoNLL-U words")
    ns = p.parse_args(argv)
    if ns.sentences < 1 or ns.files < 1:
        p.error("--sentences and --files must be positive")
    paths = render_text(ns.out_dir, ns.sentences, ns.seed, ns.files, ns.style)
    size = sum(f.stat().st_size for f in paths)
    print(f"wrote {ns.sentences} sentences, {size / 1e6:.1f} MB, in {len(paths)} files to {ns.out_dir}")


if __name__ == "__main__":
    main()
