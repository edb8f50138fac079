#!/usr/bin/env python3
"""Word recall and precision of ingestd's document text against independent extractors.

Usage:
    ingestd sync DIR --out OUTPUT.jsonl
    python3 scripts/doc_recall.py DIR OUTPUT.jsonl [--include-bad]

OUTPUT.jsonl holds chunk records, one JSON object per line (lines with an "event" key, and lines
that are not JSON objects, are ignored). Each file's extracted text is rebuilt by placing every
chunk's text at its byte range [start, end); chunks overlap and must agree there. File-name
prepending is assumed off: when a chunk's text is longer than its range, its last end-start bytes
are used and the file is flagged "prepend?".

References, one per format (files with none are listed as skipped):
  pdf                  pdftotext (poppler-utils), default mode
  docx docm            python-docx: body paragraphs, tables, headers and footers; footnotes,
                       endnotes and text boxes (not their VML fallback copies) from the XML
  pptx                 python-pptx: text frames, tables, groups, notes
  xlsx                 openpyxl: cell values
  odt rtf epub         pandoc -t plain
  doc                  LibreOffice --convert-to txt
  xls ods              LibreOffice --convert-to xlsx, then openpyxl
  odp ppt              LibreOffice --convert-to pptx, then python-pptx
  eml                  Python's email package: Subject/From/To, text/plain parts, text/html
                       through pandoc, attachments through the references above
  msg                  extract-msg: subject, sender, to, body, attachments

Words are runs of Unicode letters/digits (regex \\w+) after NFC normalisation and lower-casing,
compared as multisets: recall = common / reference words, precision = common / ingestd words.

Files under a folder named "bad" are skipped unless --include-bad: the references are not
hardened against bombs. Each reference runs with a time limit.

Needs: Debian poppler-utils pandoc libreoffice-core libreoffice-writer libreoffice-calc
libreoffice-impress; PyPI python-docx python-pptx openpyxl extract-msg. A missing tool only
skips the formats that need it. Always exits 0.
"""
import collections
import email
import email.policy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import zipfile

TIMEOUT = 120
SUPPORTED = {"pdf", "docx", "docm", "pptx", "xlsx", "odt", "odp", "ods", "rtf", "epub", "eml",
             "doc", "xls", "ppt", "msg"}
W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
TMP = None  # a scratch folder, made and removed by main()


class NoReference(Exception):
    pass


def words(text):
    return collections.Counter(re.findall(r"\w+", unicodedata.normalize("NFC", text).lower()))


# --------------------------------------------------------------------------------------------
# ingestd's text
# --------------------------------------------------------------------------------------------

def rebuild(jsonl):
    chunks = collections.defaultdict(list)
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or "event" in rec:
                continue
            try:
                key = rec["file"]["key"]
                start, end = rec["range"]
                text = rec["text"]
            except (KeyError, TypeError, ValueError):
                continue
            chunks[key].append((start, end, text))
    texts, flags = {}, {}
    for key, items in chunks.items():
        size = max(end for _, end, _ in items)
        buf = bytearray(b" " * size)
        flag = set()
        for start, end, text in items:
            data = text.encode("utf-8")
            if len(data) != end - start:
                flag.add("prepend?" if len(data) > end - start else "short-chunk")
                data = data[-(end - start):] if len(data) > end - start else data
            buf[start:start + len(data)] = data
        texts[key] = buf.decode("utf-8", errors="replace")
        flags[key] = flag
    return texts, flags


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------

def run(cmd, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, **kw)
    except FileNotFoundError:
        raise NoReference(f"{cmd[0]} not installed")
    except subprocess.TimeoutExpired:
        raise NoReference(f"{cmd[0]} timed out")


def ref_pdf(path):
    if not shutil.which("pdftotext"):
        raise NoReference("pdftotext not installed")
    res = run(["pdftotext", "-enc", "UTF-8", path, "-"])
    if res.returncode != 0:
        raise NoReference("pdftotext failed: " + res.stderr.decode(errors="replace").strip()[:80])
    return res.stdout.decode("utf-8", errors="replace"), "pdftotext"


def pandoc(path, fmt=None):
    if not shutil.which("pandoc"):
        raise NoReference("pandoc not installed")
    cmd = ["pandoc", "-t", "plain", "--wrap=none"] + (["-f", fmt] if fmt else []) + [path]
    res = run(cmd)
    if res.returncode != 0:
        raise NoReference("pandoc failed: " + res.stderr.decode(errors="replace").strip()[:80])
    return res.stdout.decode("utf-8", errors="replace"), "pandoc"


def soffice(path, fmt, ext):
    exe = shutil.which("soffice") or shutil.which("libreoffice")
    if not exe:
        raise NoReference("LibreOffice not installed")
    outdir = tempfile.mkdtemp(dir=TMP)
    profile = "file://" + os.path.join(TMP, "lo_profile")
    run([exe, f"-env:UserInstallation={profile}", "--headless", "--norestore", "--convert-to",
         fmt, "--outdir", outdir, path])
    outs = [f for f in os.listdir(outdir) if f.endswith("." + ext)]
    if not outs:
        raise NoReference(f"LibreOffice could not convert to {ext}")
    return os.path.join(outdir, outs[0])


def docx_text(path):
    try:
        import docx
    except ImportError:
        raise NoReference("python-docx not installed")
    # python-docx refuses macro-enabled content types: present the package as a plain .docx.
    with zipfile.ZipFile(path) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info, data in entries:
            if info.filename == "[Content_Types].xml":
                data = data.replace(b"application/vnd.ms-word.document.macroEnabled.main+xml",
                                    b"application/vnd.openxmlformats-officedocument."
                                    b"wordprocessingml.document.main+xml")
            z.writestr(info, data)
    doc = docx.Document(buf)
    out = []

    def table(t):
        seen = set()  # merged cells repeat one w:tc; holding it keeps lxml's proxy identical
        for row in t.rows:
            for cell in row.cells:
                if cell._tc in seen:
                    continue
                seen.add(cell._tc)
                out.extend(p.text for p in cell.paragraphs)
                for inner in cell.tables:
                    table(inner)

    def block(container):
        out.extend(p.text for p in container.paragraphs)
        for t in container.tables:
            table(t)

    block(doc)
    for section in doc.sections:
        for hf in (section.header, section.footer, section.first_page_header,
                   section.first_page_footer, section.even_page_header, section.even_page_footer):
            if not hf.is_linked_to_previous:
                block(hf)

    def xml_paragraphs(root):
        for p in root.iter(W + "p"):
            anc = p.getparent()
            skip = False
            while anc is not None:
                if anc.tag == MC_FALLBACK:
                    skip = True
                    break
                anc = anc.getparent()
            if not skip:
                out.append("".join(t.text or "" for t in p.iter(W + "t")))

    # Text boxes in the body (paragraphs inside w:txbxContent are not in doc.paragraphs).
    for box in doc.element.body.iter(W + "txbxContent"):
        anc, fallback = box.getparent(), False
        while anc is not None:
            if anc.tag == MC_FALLBACK:
                fallback = True
                break
            anc = anc.getparent()
        if not fallback:
            out.extend("".join(t.text or "" for t in p.iter(W + "t"))
                       for p in box.iter(W + "p"))
    # Footnotes and endnotes.
    from lxml import etree
    with zipfile.ZipFile(path) as z:
        for part in ("word/footnotes.xml", "word/endnotes.xml"):
            if part in z.namelist():
                xml_paragraphs(etree.fromstring(z.read(part),
                                                etree.XMLParser(resolve_entities=False)))
    return "\n".join(out), "python-docx"


def pptx_text(path, name="python-pptx"):
    try:
        from pptx import Presentation
        from pptx.enum.shapes import MSO_SHAPE_TYPE
    except ImportError:
        raise NoReference("python-pptx not installed")
    prs = Presentation(path)
    out = []

    def shapes(items):
        for sh in items:
            if sh.shape_type == MSO_SHAPE_TYPE.GROUP:
                shapes(sh.shapes)
                continue
            if sh.has_text_frame:
                out.append(sh.text_frame.text)
            if getattr(sh, "has_table", False) and sh.has_table:
                for row in sh.table.rows:
                    out.extend(c.text for c in row.cells)

    for slide in prs.slides:
        shapes(slide.shapes)
        if slide.has_notes_slide:
            out.append(slide.notes_slide.notes_text_frame.text
                       if slide.notes_slide.notes_text_frame else "")
    return "\n".join(out), name


def xlsx_text(path, name="openpyxl"):
    try:
        import openpyxl
    except ImportError:
        raise NoReference("openpyxl not installed")
    wb = openpyxl.load_workbook(path, data_only=True, read_only=True)
    out = []
    for ws in wb.worksheets:
        out.append(ws.title)
        for row in ws.iter_rows(values_only=True):
            out.extend(str(v) for v in row if v is not None)
    wb.close()
    return "\n".join(out), name


def msg_text(path):
    try:
        import extract_msg
    except ImportError:
        raise NoReference("extract-msg not installed")
    msg = extract_msg.openMsg(path)
    try:
        out = [msg.subject or "", msg.sender or "", msg.to or "", msg.body or ""]
        for att in msg.attachments:
            fname = getattr(att, "longFilename", None) or getattr(att, "shortFilename", "") or ""
            out.append(fname)
            data = getattr(att, "data", None)
            if isinstance(data, bytes):
                out.append(bytes_text(fname, data))
    finally:
        msg.close()
    return "\n".join(out), "extract-msg"


def html_text(html):
    path = os.path.join(tempfile.mkdtemp(dir=TMP), "part.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(html)
    return pandoc(path, "html")[0]


def eml_text(path):
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    out = []

    def walk(m):
        for h in ("Subject", "From", "To"):
            if m[h]:
                out.append(str(m[h]))
        if m.is_multipart():
            parts(m)
        else:
            leaf(m, m.get_content_type(), m.get_filename())

    def parts(m):
        for part in m.iter_parts():
            ctype = part.get_content_type()
            if ctype == "message/rfc822":
                if part.get_filename():
                    out.append(part.get_filename())
                for inner in part.iter_parts():
                    walk(inner)
            elif part.is_multipart():
                parts(part)
            else:
                leaf(part, ctype, part.get_filename())

    def leaf(part, ctype, fname):
        if fname:
            out.append(fname)
            out.append(bytes_text(fname, part.get_payload(decode=True) or b""))
        elif ctype == "text/plain":
            out.append(part.get_content())
        elif ctype == "text/html":
            out.append(html_text(part.get_content()))

    walk(msg)
    return "\n".join(out), "email+pandoc"


def bytes_text(fname, data):
    """Reference text of an attachment; empty when its format has no reference."""
    ext = os.path.splitext(fname)[1].lower().lstrip(".")
    if ext in ("txt", "csv", "md", "text"):
        return data.decode("utf-8", errors="replace")
    if ext not in SUPPORTED:
        return ""
    path = os.path.join(tempfile.mkdtemp(dir=TMP), os.path.basename(fname))
    with open(path, "wb") as f:
        f.write(data)
    try:
        return reference(path)[0]
    except NoReference:
        return ""


def reference(path):
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext == "pdf":
        return ref_pdf(path)
    if ext in ("docx", "docm"):
        return docx_text(path)
    if ext == "pptx":
        return pptx_text(path)
    if ext == "xlsx":
        return xlsx_text(path)
    if ext in ("odt", "rtf", "epub"):
        return pandoc(path)
    if ext == "doc":
        out = soffice(path, "txt:Text (encoded):UTF8", "txt")
        with open(out, encoding="utf-8-sig", errors="replace") as f:
            return f.read(), "libreoffice-txt"
    if ext in ("xls", "ods"):
        return xlsx_text(soffice(path, "xlsx", "xlsx"), "libreoffice-xlsx+openpyxl")
    if ext in ("odp", "ppt"):
        return pptx_text(soffice(path, "pptx", "pptx"), "libreoffice-pptx+python-pptx")
    if ext == "eml":
        return eml_text(path)
    if ext == "msg":
        return msg_text(path)
    raise NoReference("no reference for ." + ext)


# --------------------------------------------------------------------------------------------

def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    include_bad = "--include-bad" in argv
    if len(args) != 2:
        print(__doc__.split("\n\n")[1])
        return 0
    root, jsonl = args
    global TMP
    TMP = tempfile.mkdtemp(prefix="doc_recall_")
    texts, flags = rebuild(jsonl)
    files, skipped_bad = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            key = os.path.relpath(full, root).replace(os.sep, "/")
            if os.path.splitext(fn)[1].lower().lstrip(".") not in SUPPORTED:
                continue
            if not include_bad and "bad" in key.split("/")[:-1]:
                skipped_bad += 1
                continue
            files.append((key, full))
    recalls = []
    for key, full in files:
        try:
            ref, name = reference(full)
        except NoReference as e:
            print(f"{key:34} skipped: {e}")
            continue
        except Exception as e:  # a reference that cannot read the file is no reference
            print(f"{key:34} skipped: reference failed ({type(e).__name__}: {str(e)[:60]})")
            continue
        rw = words(ref)
        if not rw:
            print(f"{key:34} skipped: reference {name} found no words")
            continue
        got = words(texts.get(key, ""))
        common = sum((rw & got).values())
        recall = common / sum(rw.values())
        precision = common / sum(got.values()) if got else 0.0
        note = "" if key in texts else "  (no chunks)"
        if flags.get(key):
            note += "  (" + ",".join(sorted(flags[key])) + ")"
        print(f"{key:34} recall={recall:.3f} precision={precision:.3f} ref={name} "
              f"words={sum(rw.values())}/{sum(got.values())}{note}")
        recalls.append(recall)
    if skipped_bad:
        print(f"(skipped {skipped_bad} files under bad/; pass --include-bad to score them)")
    if recalls:
        print(f"summary: mean_recall={sum(recalls) / len(recalls):.3f} "
              f"min_recall={min(recalls):.3f} count={len(recalls)}")
    else:
        print("summary: mean_recall=n/a min_recall=n/a count=0")
    return 0


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        if TMP:
            shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(0)
