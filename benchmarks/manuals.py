"""A benchmark corpus of real technical manuals: about 190 man pages of this machine, typeset as PDFs with a text
layer (a few thousand pages), and hand-written questions resolved to the pages that answer them.

Nothing is downloaded. Each man page in MANUALS is read from /usr/share/man, formatted by groff as a terminal would
show it (80 columns, no hyphenation, C.UTF-8 locale, continuous rendering, Latin-1 output), then cut into pages of
LINES_PER_PAGE lines and drawn with reportlab in Courier on A4, one PDF per man page, with the running header
groff makes ("TAR(1)  GNU TAR Manual  TAR(1)") on every page and the source, date and page number at the foot, as
a printed manual has them. Section headings (the lines groff does not indent) are set in bold.

The questions (benchmarks/data/manuals_questions.jsonl) name a document and a short verbatim evidence phrase; each
is resolved to the page(s) whose text layer, read back with pypdfium2, contains the phrase (whitespace collapsed,
case ignored), and written to out/questions.jsonl in the eval format of servers/sample/questions.jsonl. A
question whose phrase is not found (another version of the man page) is dropped with a warning.

out/manifest.json records every document, its page count, the man page it came from and the Debian package and
version that ship it, so the figures measured on the corpus can be tied to those versions. A second run with the
same man pages, package versions and layout renders nothing; changed questions are only resolved again.

    python benchmarks/manuals.py [--out DIR]      # default ~/.cache/pagelens/bench/manuals
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from pagelens.errors import DependencyError, NotFoundError

DEFAULT_OUT = Path.home() / ".cache" / "pagelens" / "bench" / "manuals"
QUESTIONS = Path(__file__).resolve().parent / "data" / "manuals_questions.jsonl"
MAN_ROOT = Path("/usr/share/man")
FORMAT = 1  # bump when the rendering below changes, so cached corpora are rebuilt
COLUMNS = 80
LINES_PER_PAGE = 60
FONT_SIZE = 9.0
LEADING = 11.5
WORKERS = 2

# man page (name.section) -> the Debian package that ships it; sorted by name. About 2,100 pages in all.
MANUALS: dict[str, str] = {
    "apt-cache.8": "apt", "apt-get.8": "apt", "apt-mark.8": "apt", "apt.8": "apt", "apt.conf.5": "apt",
    "apt_preferences.5": "apt", "base64.1": "coreutils", "bash.1": "bash", "bzip2.1": "bzip2",
    "cat.1": "coreutils", "chmod.1": "coreutils", "chown.1": "coreutils", "chroot.8": "coreutils",
    "cmake.1": "cmake", "cmp.1": "diffutils", "column.1": "bsdextrautils", "cp.1": "coreutils",
    "csplit.1": "coreutils", "curl.1": "curl", "cut.1": "coreutils", "dash.1": "dash", "date.1": "coreutils",
    "dd.1": "coreutils", "df.1": "coreutils", "diff.1": "diffutils", "dmesg.1": "util-linux", "dpkg-deb.1": "dpkg",
    "dpkg-query.1": "dpkg", "dpkg.1": "dpkg", "du.1": "coreutils", "env.1": "coreutils", "expr.1": "coreutils",
    "fallocate.1": "util-linux", "file.1": "file", "find.1": "findutils", "findmnt.8": "util-linux",
    "flock.1": "util-linux", "free.1": "procps", "fstab.5": "mount", "git-add.1": "git-man",
    "git-bisect.1": "git-man", "git-blame.1": "git-man", "git-branch.1": "git-man", "git-cherry-pick.1": "git-man",
    "git-clean.1": "git-man", "git-clone.1": "git-man", "git-commit.1": "git-man", "git-config.1": "git-man",
    "git-diff.1": "git-man", "git-fetch.1": "git-man", "git-log.1": "git-man", "git-merge.1": "git-man",
    "git-pull.1": "git-man", "git-push.1": "git-man", "git-rebase.1": "git-man", "git-remote.1": "git-man",
    "git-reset.1": "git-man", "git-restore.1": "git-man", "git-stash.1": "git-man", "git-status.1": "git-man",
    "git-submodule.1": "git-man", "git-switch.1": "git-man", "git-tag.1": "git-man", "git-worktree.1": "git-man",
    "git.1": "git-man", "gitignore.5": "git-man", "glob.7": "manpages", "gpg.1": "gpg", "grep.1": "grep",
    "gzip.1": "gzip", "head.1": "coreutils", "hexdump.1": "bsdextrautils", "hier.7": "manpages",
    "hostnamectl.1": "systemd", "hosts.5": "manpages", "id.1": "coreutils", "install.1": "coreutils",
    "ionice.1": "util-linux", "ip-address.8": "iproute2", "ip-link.8": "iproute2", "ip-route.8": "iproute2",
    "ip.8": "iproute2", "join.1": "coreutils", "journalctl.1": "systemd", "journald.conf.5": "systemd",
    "jq.1": "jq", "kill.1": "procps", "ld.1": "binutils-common", "less.1": "less", "ln.1": "coreutils",
    "login.defs.5": "login", "loginctl.1": "systemd", "ls.1": "coreutils", "lsblk.8": "util-linux",
    "lscpu.1": "util-linux", "lz4.1": "lz4", "make.1": "make", "man.1": "man-db", "mawk.1": "mawk",
    "mkdir.1": "coreutils", "mkswap.8": "util-linux", "mktemp.1": "coreutils", "mount.8": "mount",
    "mv.1": "coreutils", "nm.1": "binutils-common", "nsswitch.conf.5": "manpages", "numfmt.1": "coreutils",
    "objdump.1": "binutils-common", "od.1": "coreutils", "openssl-enc.1ssl": "openssl",
    "openssl-req.1ssl": "openssl", "openssl-s_client.1ssl": "openssl", "openssl-x509.1ssl": "openssl",
    "openssl.1ssl": "openssl", "os-release.5": "systemd", "passwd.1": "passwd", "passwd.5": "passwd",
    "paste.1": "coreutils", "patch.1": "patch", "pgrep.1": "procps", "pip.1": "python3-pip",
    "pkg-config.1": "pkgconf", "printf.1": "coreutils", "ps.1": "procps", "python3.1": "python3-minimal",
    "readelf.1": "binutils-common", "readlink.1": "coreutils", "realpath.1": "coreutils", "regex.7": "manpages",
    "resolv.conf.5": "manpages", "rm.1": "coreutils", "scp.1": "openssh-client", "script.1": "bsdutils",
    "sed.1": "sed", "seq.1": "coreutils", "sftp.1": "openssh-client", "sha256sum.1": "coreutils",
    "shadow.5": "passwd", "shuf.1": "coreutils", "signal.7": "manpages", "sort.1": "coreutils",
    "sources.list.5": "apt", "split.1": "coreutils", "sqlite3.1": "sqlite3", "ss.8": "iproute2",
    "ssh-add.1": "openssh-client", "ssh-agent.1": "openssh-client", "ssh-copy-id.1": "openssh-client",
    "ssh-keygen.1": "openssh-client", "ssh.1": "openssh-client", "ssh_config.5": "openssh-client",
    "stat.1": "coreutils", "stdbuf.1": "coreutils", "strace.1": "strace", "strip.1": "binutils-common",
    "sysctl.8": "procps", "systemctl.1": "systemd", "systemd-run.1": "systemd", "systemd.exec.5": "systemd",
    "systemd.service.5": "systemd", "systemd.timer.5": "systemd", "systemd.unit.5": "systemd",
    "tail.1": "coreutils", "tar.1": "tar", "taskset.1": "util-linux", "tee.1": "coreutils", "test.1": "coreutils",
    "timedatectl.1": "systemd", "timeout.1": "coreutils", "tmux.1": "tmux", "top.1": "procps",
    "touch.1": "coreutils", "tr.1": "coreutils", "truncate.1": "coreutils", "uname.1": "coreutils",
    "uniq.1": "coreutils", "unshare.1": "util-linux", "unzip.1": "unzip", "update-alternatives.1": "dpkg",
    "useradd.8": "passwd", "usermod.8": "passwd", "valgrind.1": "valgrind", "vim.1": "vim-common",
    "vmstat.8": "procps", "watch.1": "procps", "wc.1": "coreutils", "wget.1": "wget", "xargs.1": "findutils",
    "xxd.1": "xxd", "xz.1": "xz-utils", "zip.1": "zip", "zstd.1": "zstd",
}


def man_source(name: str) -> Path:
    """The groff source of a man page on this machine, symlinks (alternatives) followed."""
    stem, section = name.rsplit(".", 1)
    for candidate in (MAN_ROOT / f"man{section[0]}" / f"{name}.gz", MAN_ROOT / f"man{section[0]}" / name):
        if candidate.exists():
            return candidate.resolve()
    package = MANUALS.get(name, "unknown")
    raise NotFoundError(f"man page {name} ({stem} in section {section}) is not installed under {MAN_ROOT}: install "
                        f"the Debian package that ships it (apt-get install {package}), with man pages not excluded "
                        f"by /etc/dpkg/dpkg.cfg.d, or drop it from MANUALS")


def read_source(path: Path) -> bytes:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    first = data.lstrip().split(b"\n", 1)[0]
    if first.startswith(b".so "):  # a page that only includes another one
        target = MAN_ROOT / first[4:].decode().strip()
        return read_source(next(p for p in (target.with_name(target.name + ".gz"), target) if p.exists()))
    return data


def render_text(source: Path) -> str:
    """The man page as groff formats it for an 80-column terminal: one continuous page, no hyphenation."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "MANWIDTH": str(COLUMNS)}
    command = ["groff", "-k", "-t", "-man", "-Tlatin1", "-P-c", "-P-b", "-P-u", f"-rLL={COLUMNS}n",
               f"-rLT={COLUMNS}n", "-rHY=0", "-rcR=1"]
    done = subprocess.run(command, input=read_source(source), capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise DependencyError(f"groff failed on {source} (exit {done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()[:300]}; check that groff-base works")
    return done.stdout.decode("latin-1")


def split_title(line: str) -> list[str]:
    """'TAR(1)   GNU TAR Manual   TAR(1)' -> ['TAR(1)', 'GNU TAR Manual', 'TAR(1)'] (missing parts empty)."""
    parts = [p for p in re.split(r"\s{2,}", line.strip()) if p]
    if len(parts) == 2:
        parts.insert(1, "")
    return (parts + ["", "", ""])[:3] if len(parts) <= 3 else [parts[0], " ".join(parts[1:-1]), parts[-1]]


def paginate(text: str) -> tuple[list[str], list[str], list[list[str]]]:
    """The running header, the footer and the pages of a man page groff rendered as one continuous page."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    header, footer, body = split_title(lines[0]), split_title(lines[-1]), lines[1:-1]
    pages, page = [], []
    for line in body:
        if not page and not line:  # no page starts with blank lines
            continue
        page.append(line)
        if len(page) == LINES_PER_PAGE:
            pages.append(page)
            page = []
    while page and not page[-1]:
        page.pop()
    if page:
        pages.append(page)
    return header, footer, pages


def write_pdf(path: Path, header: list[str], footer: list[str], pages: list[list[str]]) -> None:
    from reportlab import rl_config
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen.canvas import Canvas

    rl_config.invariant = 1  # fixed dates and ids: the same man page gives the same bytes
    width, height = A4
    left = (width - COLUMNS * 0.6 * FONT_SIZE) / 2  # Courier advances 0.6 em
    right = width - left
    top = height - 64
    canvas = Canvas(str(path), pagesize=A4, invariant=1)
    canvas.setTitle(f"{header[0]} {header[1]}".strip())
    canvas.setSubject(f"man page {path.name.removesuffix('.pdf')}")
    for number, page in enumerate(pages, 1):
        _draw_running_line(canvas, header, top + 22, left, right, "Courier-Bold")
        canvas.setLineWidth(0.4)
        canvas.line(left, top + 16, right, top + 16)
        y = top
        for line in page:
            canvas.setFont("Courier-Bold" if line and not line[0].isspace() else "Courier", FONT_SIZE)
            canvas.drawString(left, y, line)
            y -= LEADING
        canvas.line(left, 52, right, 52)
        _draw_running_line(canvas, [footer[0], footer[1], f"Page {number} of {len(pages)}"], 40, left, right,
                           "Courier")
        canvas.showPage()
    canvas.save()


def _draw_running_line(canvas, parts: list[str], y: float, left: float, right: float, font: str) -> None:
    """A running header or footer: its three parts flush left, centred and flush right on one line."""
    canvas.setFont(font, FONT_SIZE)
    canvas.drawString(left, y, parts[0])
    canvas.drawCentredString((left + right) / 2, y, parts[1])
    canvas.drawRightString(right, y, parts[2])


def build_one(name: str, out: Path) -> dict:
    """Render one man page to out/<name>.pdf; what the manifest records about it."""
    source = man_source(name)
    header, footer, pages = paginate(render_text(source))
    write_pdf(out / f"{name}.pdf", header, footer, pages)
    return {"document": f"{name}.pdf", "man_page": name, "title": " ".join(p for p in header[:2] if p),
            "pages": len(pages), "source": str(source)}


def provenance(sources: dict[str, Path]) -> dict[str, dict]:
    """Man page -> the Debian package (and its version) that owns the file it was rendered from."""
    done = subprocess.run(["dpkg", "-S", *map(str, sources.values())], capture_output=True, text=True, check=False)
    owner = {}
    for line in done.stdout.splitlines():
        package, _, path = line.partition(": ")
        owner[path.strip()] = package.split(",")[0].strip()
    packages = sorted(set(owner.values()))
    done = subprocess.run(["dpkg-query", "-W", "-f", "${binary:Package}\t${Version}\n", *packages],
                          capture_output=True, text=True, check=False)
    version = {}
    for line in done.stdout.splitlines():
        package, _, ver = line.partition("\t")
        version[package] = version[package.split(":")[0]] = ver
    return {name: {"package": owner.get(str(path)), "version": version.get(owner.get(str(path), ""))}
            for name, path in sources.items()}


def groff_version() -> str:
    try:
        done = subprocess.run(["groff", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise DependencyError(f"groff cannot be run ({error}): install groff-base (apt-get install groff-base)")
    return done.stdout.splitlines()[0]


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def page_texts(pdf: Path) -> list[str]:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(pdf)
    try:
        texts = []
        for page in doc:
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return texts
    finally:
        doc.close()


def body(text: str) -> str:
    """A page's text layer without its running header and footer (first and last line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[1:-1])


def resolve(questions: list[dict], out: Path) -> tuple[list[dict], list[str]]:
    """Eval rows for the questions whose evidence is found, and a line for each one dropped."""
    texts: dict[str, list[str]] = {}
    kept, dropped = [], []
    for q in questions:
        row = {"id": q["id"], "question": q["question"], "answers": q["answers"], "pages": [],
               "is_sufficient": q["is_sufficient"]}
        if q["is_sufficient"]:
            document = q["document"]
            if not (out / document).exists():
                dropped.append(f"{q['id']}: document {document} is not in the corpus")
                continue
            if document not in texts:
                texts[document] = page_texts(out / document)
            pages = texts[document]
            phrase = normalise(q["evidence"])
            hits = [i + 1 for i, text in enumerate(pages) if phrase in normalise(text)]
            if not hits:  # a phrase across a page break: cite both pages
                hits = [n for i in range(len(pages) - 1)
                        if phrase in normalise(body(pages[i]) + " " + body(pages[i + 1])) for n in (i + 1, i + 2)]
            if not hits:
                dropped.append(f"{q['id']}: evidence {q['evidence']!r} not found in {document}")
                continue
            row["pages"] = [{"document": document, "page": n} for n in hits]
        kept.append(row)
    return kept, dropped


def load_questions(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path} repeats question ids: give each line its own id")
    return rows


def build(out: Path = DEFAULT_OUT) -> Path:
    """Build (or reuse) the corpus in `out`: one PDF per man page, manifest.json and questions.jsonl; returns `out`."""
    from tqdm import tqdm

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(MANUALS)
    sources = {name: man_source(name) for name in names}  # every missing page is reported before any work
    origin = provenance(sources)
    config = {"format": FORMAT, "columns": COLUMNS, "lines_per_page": LINES_PER_PAGE, "font": "Courier",
              "font_size": FONT_SIZE, "page_size": "A4", "groff": groff_version(),
              "manuals": {name: origin[name] for name in names}}
    questions_text = QUESTIONS.read_bytes()
    questions_sha = hashlib.sha256(questions_text).hexdigest()
    manifest_path = out / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    current = old.get("config") == config and all((out / d["document"]).exists() for d in old.get("documents", []))
    if current and old.get("questions", {}).get("sha256") == questions_sha and (out / "questions.jsonl").exists():
        print(f"{out}: up to date ({old['total_pages']} pages in {len(old['documents'])} documents)")
        return out

    if current:
        documents, seconds = old["documents"], old["build_seconds"]
    else:
        started = time.perf_counter()
        for stale in old.get("documents", []):  # only what an earlier build wrote: --out may hold other files
            (out / stale["document"]).unlink(missing_ok=True)
        documents = []
        with ProcessPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(build_one, name, out) for name in names]
            with tqdm(total=len(futures), unit="manual", desc="rendering", file=sys.stderr) as bar:
                for future in as_completed(futures):
                    documents.append(future.result())
                    bar.update()
        documents.sort(key=lambda d: d["man_page"])
        for document in documents:
            document.update(origin[document["man_page"]])
        seconds = round(time.perf_counter() - started, 1)

    kept, dropped = resolve(load_questions(QUESTIONS), out)
    for line in dropped:
        warnings.warn(f"question dropped, {line}", stacklevel=2)
    with open(out / "questions.jsonl", "w") as handle:
        for row in kept:
            handle.write(json.dumps(row) + "\n")
    manifest = {
        "description": "Man pages of this machine typeset as PDFs by benchmarks/manuals.py; each document keeps "
                       "the licence of the man page it was made from.",
        "config": config,
        "documents": documents,
        "total_pages": sum(d["pages"] for d in documents),
        "build_seconds": seconds,
        "questions": {"source": str(QUESTIONS), "sha256": questions_sha, "kept": len(kept),
                      "answerable": sum(r["is_sufficient"] for r in kept),
                      "unanswerable": sum(not r["is_sufficient"] for r in kept), "dropped": dropped},
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{out}: {len(documents)} documents, {manifest['total_pages']} pages, rendered in {seconds} s; "
          f"{len(kept)} questions kept, {len(dropped)} dropped")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"corpus folder (default {DEFAULT_OUT})")
    args = parser.parse_args()
    build(args.out)


if __name__ == "__main__":
    main()
