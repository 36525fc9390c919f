#!/usr/bin/env python3
"""Extract polder's real-text corpus from unpacked Debian documentation packages.

Reads the trees that get_corpus.sh unpacked with `dpkg -x` (one folder per package under --root), turns every
source page (HTML page, manual page) into clean UTF-8 plain text with paragraphs separated by blank lines, drops
navigation boilerplate, pages not in the expected language, and exact / near duplicates, and writes
<out>/<lang>.jsonl ({"text", "source", "lang", "license"} per line) plus <out>/manifest.json with per-language
and per-source counts and each source's licence as read from its debian/copyright file.
Standard library only, so it runs on a bare Debian machine; output is deterministic (sorted inputs, no clocks).
"""

import argparse
import gzip
import hashlib
import html
import json
import os
import re
import sys
import unicodedata
from html.parser import HTMLParser

# ------------------------------------------------------------------------------------------------------------
# Language identification: share of tokens that are frequent function words of each language. Crude, but
# documentation pages are long enough for it, and it is what decides which pages of the mostly-English
# packages (debian-handbook nl, gimp-help-nl, lilypond-doc-html-nl) are really Dutch.
# ------------------------------------------------------------------------------------------------------------
STOPWORDS = {
    "nl": "de het een en van in is dat op te zijn voor met niet die als er aan ook door bij worden wordt of om "
          "naar dan kan deze u uw je hebben heeft wat zal moet geen nog dit kunnen maar hun over uit tot "
          "wanneer zoals welke waar hier alle meer andere onder wel zo al", 
    "en": "the and of to is in that for it with as on are be this by you or can not an which from at if "
          "will your have has all when these there more other should only used use into then also their "
          "may must been such",
    "de": "der die das und ist nicht zu den von mit sich des auf für im dem ein eine einer eines sie es "
          "wird werden auch oder bei kann wenn aus nach wie nur sind hat haben dass über unter noch dieser "
          "diese können muss sein",
    "fr": "le la les de des du et est un une pour que qui dans en pas sur au aux par ce cette vous il elle "
          "sont avec ou plus être peut si ne ces votre leur doit tout fichier",
    "es": "el la los las de del y es un una que en para por con no se su sus como al más este esta puede "
          "son lo si o también pero ser ha hay usted",
    "it": "il lo la gli le di del della dei delle e è un una che in per con non si su come al alla sono "
          "questo questa può anche se ma più essere ha nel nella degli",
    "pt": "o a os as de do da dos das e é um uma que em para por com não se no na nos nas como ao mais "
          "este esta pode são ser também você seu sua",
    "da": "og i at det er en til på med for som den de af ikke har kan vil et skal du eller der fra hvis "
          "eller være ved om når disse denne også men",
    "sv": "och i att det är en till på med för som den de av inte har kan ska ett du eller från om när "
          "dessa denna också men vara finns vid måste",
    "cs": "a je v na se že to s k z do pro o jako by ale jsou nebo být při které který která tak také "
          "pokud jeho již může tento tato toto",
    "ca": "el la els les de del i és un una que en per amb no es als com més aquest aquesta pot són si "
          "o també però ser seu seva al",
    "el": "και το η ο να τα του της των για με σε που είναι από θα ένα μια στο στην τον την αν δεν ή "
          "στη στα οι",
    "ro": "și în de la a cu pe este un o care nu pentru se sunt din ca să mai sau ale al lui acest "
          "această fi poate dacă ce",
}
STOPWORD_SETS = {lang: set(words.split()) for lang, words in STOPWORDS.items()}
WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*", re.UNICODE)


def language_scores(text):
    """Returns ({lang: share of tokens that are its stopwords}, number of word tokens)."""
    words = [w.lower() for w in WORD_RE.findall(text)]
    if not words:
        return {}, 0
    counts = dict.fromkeys(STOPWORD_SETS, 0)
    for w in words:
        for lang, stop in STOPWORD_SETS.items():
            if w in stop:
                counts[lang] += 1
    return {lang: c / len(words) for lang, c in counts.items()}, len(words)


def is_foreign_paragraph(paragraph, lang):
    """True when a paragraph of at least 10 words is clearly in another language than lang: its best language
    reaches a 10% stopword share and lang has less than half of that (so related languages, e.g. ca/es, and
    code or tables, which score low everywhere, are never dropped)."""
    if "\n" in paragraph:
        return None  # preformatted (code, synopsis, table): prose paragraphs hold no line breaks
    scores, n = language_scores(paragraph)
    if n < 10:
        return None
    best = max(scores, key=lambda k: (scores[k], k))
    if best != lang and scores[best] >= 0.10 and scores.get(lang, 0.0) < 0.5 * scores[best]:
        return best
    return None


def detect_language(text):
    """Returns (lang or None, score). None when too short or no language reaches a plausible stopword share."""
    scores, n = language_scores(text)
    if n < 8:
        return None, 0.0
    lang = max(scores, key=lambda k: (scores[k], k))
    if scores[lang] < 0.08:
        return None, scores[lang]
    return lang, scores[lang]


# ------------------------------------------------------------------------------------------------------------
# HTML to text.
# ------------------------------------------------------------------------------------------------------------
BLOCK_TAGS = {
    "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr",
    "blockquote", "pre", "section", "article", "main", "figure", "figcaption", "caption", "hr", "br",
    "address", "center", "tbody", "thead", "tfoot", "body", "form", "fieldset", "details", "summary",
}
VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "param", "source",
             "track", "wbr"}
SKIP_TAGS = {"head", "script", "style", "nav", "noscript", "header", "footer", "aside", "button", "select",
             "textarea", "svg", "math", "object", "iframe", "template", "title"}
# Navigation and boilerplate containers of DocBook XSL (installation guide, aptitude, FAQ, handbook),
# LibreOffice help, GIMP help (DocBook) and Texinfo (LilyPond).
SKIP_CLASSES = {
    "navheader", "navfooter", "relatedtopics", "toc", "list-of-figures", "list-of-tables", "list-of-examples",
    "debug", "navigation", "nav-footer", "nav-header", "header", "footer", "breadcrumbs", "legalnotice",
    "docnav", "searchbox", "search", "translations", "pagemenu", "footer-text", "contributors", "index",
    "nav_table", "header_line", "toc-list", "index-entry-id", "screenshot", "mediaobject", "footnotes",
}
SKIP_IDS = {"TopLeftHeader", "DEBUG", "SearchFrame", "DonationFrame", "Contents", "Index", "Bookmarks",
            "tocframe", "navigation", "search", "footer", "header", "breadcrumb", "banner", "title",
            "verifier_texinfo", "site-footer", "languages", "language-selector"}
LO_SHOWN_PREFIXES = ("default", "WRITER", "CALC", "IMPRESS", "DRAW", "MATH", "CHART", "BASIC")


class HtmlText(HTMLParser):
    """Collects visible text as paragraphs. Skipped subtrees are tracked by tag name and nesting depth, so
    unclosed <p> or <li> elsewhere in sloppy HTML cannot make the parser lose its place."""

    def __init__(self, split_tags=()):
        super().__init__(convert_charrefs=True)
        self.paragraphs = []
        self.current = []
        self.pre_depth = 0
        self.skip_tag = None
        self.skip_depth = 0
        self.done = False
        self.split_tags = set(split_tags)
        self.sections = []  # list of paragraph lists when split_tags is set (one per section)

    def _flush(self):
        if self.pre_depth:
            text = "".join(self.current)
            lines = [ln.rstrip() for ln in text.split("\n")]
            while lines and not lines[0].strip():
                lines.pop(0)
            while lines and not lines[-1].strip():
                lines.pop()
            text = "\n".join(lines)
        else:
            text = re.sub(r"\s+", " ", "".join(self.current)).strip()
        if text:
            self.paragraphs.append(text)
        self.current = []

    def _skipped(self, tag, attrs):
        if tag in SKIP_TAGS:
            return True
        a = dict(attrs)
        if "hidden" in a:
            # LibreOffice help hides every alternative of a switch and shows one with JavaScript: keep the
            # default and the per-application variants, drop the per-platform (MAC, WIN, UNIX) ones.
            return not (a.get("id") or "").startswith(LO_SHOWN_PREFIXES)
        classes = set((a.get("class") or "").split())
        if classes & SKIP_CLASSES:
            return True
        return a.get("id") in SKIP_IDS

    def handle_starttag(self, tag, attrs):
        if self.done:
            return
        if tag == "p" and "related" in (dict(attrs).get("class") or "").split():
            # LibreOffice's "Verwante onderwerpen" (related topics) heading: the rest of the page is links.
            self._flush()
            self.done = True
            return
        if self.skip_tag is not None:
            if tag == self.skip_tag and tag not in VOID_TAGS:
                self.skip_depth += 1
            return
        if tag not in VOID_TAGS and self._skipped(tag, attrs):
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in self.split_tags:
            self._flush()
            self.sections.append(self.paragraphs)
            self.paragraphs = []
        if tag in BLOCK_TAGS:
            if tag == "br" and self.pre_depth:
                self.current.append("\n")
            else:
                self._flush()
        if tag == "pre":
            self.pre_depth += 1
        if tag in ("td", "th"):
            self.current.append(" ")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag in ("td", "th"):
            self.current.append(" ")

    def handle_data(self, data):
        if self.skip_tag is None and not self.done:
            self.current.append(data)

    def finish(self):
        self.close()
        self._flush()
        if self.split_tags:
            self.sections.append(self.paragraphs)
            return [s for s in self.sections if s]
        return [self.paragraphs]


def read_text_file(path):
    with open(path, "rb") as f:
        raw = f.read()
    for enc in ("utf-8", "cp1252"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1")


def html_to_docs(path, split_tags=()):
    parser = HtmlText(split_tags)
    parser.feed(read_text_file(path))
    return ["\n\n".join(p) for p in parser.finish()]


# ------------------------------------------------------------------------------------------------------------
# troff / man(7) to text.
# ------------------------------------------------------------------------------------------------------------
TROFF_CHARS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "oq": "‘", "cq": "’", "lq": "“", "rq": "”",
    "bu": "•", "co": "©", "rg": "®", "tm": "™", "de": "°", "ti": "~", "ha": "^", "rs": "\\", "sl": "/",
    "ga": "`", "aa": "´", "lh": "☜", "rh": "☞", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "<=": "≤",
    ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "mu": "×", "di": "÷", "+-": "±", "ss": "ß", "sc": "§",
    "ps": "¶", "ct": "¢", "Po": "£", "Eu": "€", "eu": "€", "dg": "†", "ba": "|", "br": "│", "or": "|",
    "at": "@", "sh": "#", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "bv": "|",
    "ul": "_", "ru": "_", "pl": "+", "eq": "=", "fm": "′", "sd": "″", "OK": "✓", "--": "—", "ae": "æ",
    "AE": "Æ", "o/": "ø", "O/": "Ø", "ao": "å", "AO": "Å", "IJ": "Ĳ", "ij": "ĳ",
}
ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327",
           "o": "\u030a", "v": "\u030c"}
TROFF_STRINGS = {"lq": "“", "rq": "”", "R": "®", "Tm": "™", "S": "", "B": "", "I": "", "aq": "'"}


def troff_named_char(name):
    if name in TROFF_CHARS:
        return TROFF_CHARS[name]
    if len(name) == 2 and name[0] in ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + ACCENTS[name[0]])
    if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        return chr(int(name[1:], 16))
    return ""


ESCAPE_RE = re.compile(
    r"""\\(?:
        \((?P<c2>..)                      # \(xx named character
      | \[(?P<cb>[^\]]*)\]                # \[name]
      | \*(?:\((?P<s2>..)|\[(?P<sb>[^\]]*)\]|(?P<s1>.))   # string interpolation
      | f(?:\(..|\[[^\]]*\]|.)            # font change
      | s[+-]?(?:\d|\(\d\d|\[\d+\])       # size change
      | [hvwlLNDxoSHRZbC]'[^']*'          # escapes with a quoted argument
      | n(?:\(..|\[[^\]]*\]|.)            # number register
      | k.|g.|z|c|d|u|r|p|t|a             # misc zero-width / motion
      | (?P<lit>.)                        # everything else: \- \e \& \~ ...
    )""",
    re.VERBOSE,
)


def troff_inline(text):
    def repl(m):
        if m.group("c2") is not None:
            return troff_named_char(m.group("c2"))
        if m.group("cb") is not None:
            return troff_named_char(m.group("cb"))
        s = m.group("s2") or m.group("sb") or m.group("s1")
        if s is not None:
            return TROFF_STRINGS.get(s, "")
        lit = m.group("lit")
        if lit is None:
            return ""
        return {"-": "-", "e": "\\", "\\": "\\", "~": " ", " ": " ", "0": " ", "'": "'", "`": "`",
                ".": ".", "%": "", "&": "", "|": "", "^": "", "/": "", ",": "", "!": "", "{": "",
                "}": "", ":": "", "?": ""}.get(lit, lit)

    return ESCAPE_RE.sub(repl, text)


def troff_args(line):
    """Splits a request's arguments like troff: whitespace separated, double quotes group ("" is a quote)."""
    args, cur, quoted, i = [], [], False, 0
    had = False
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(line) and line[i + 1] == '"':
                    cur.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                cur.append(ch)
        elif ch == '"':
            quoted, had = True, True
        elif ch in " \t":
            if cur or had:
                args.append("".join(cur))
            cur, had = [], False
        else:
            cur.append(ch)
        i += 1
    if cur or had:
        args.append("".join(cur))
    return args


FONT_MACROS = {"B", "I", "SM", "SB", "BR", "RB", "BI", "IB", "IR", "RI", "R", "CW", "CB", "CI"}
BREAK_MACROS = {"PP", "LP", "P", "sp", "HP", "SH", "SS", "TP", "IP", "TQ", "TH", "RS", "RE", "ns", "EX", "EE",
                "SY", "YS", "nf", "fi", "bp", "Sh", "Pp", "Bl", "El", "It", "Ss", "TS", "TE"}


def man_to_text(source):
    """Converts man(7) troff source to paragraphs. Macro coverage is what manpages-l10n uses; unknown requests
    are dropped (their arguments are formatting parameters, not prose)."""
    paragraphs, current, nofill, tag_next = [], [], False, False
    skipping_def = False
    link, link_at = "", 0
    in_table, table_fmt = False, False

    def flush():
        if nofill:
            text = "\n".join(ln.rstrip() for ln in current).strip("\n")
        else:
            text = re.sub(r"\s+", " ", " ".join(current)).strip()
        if text.strip():
            paragraphs.append(text)
        current.clear()

    lines = source.replace("\r", "").split("\n")
    joined, buf = [], ""
    for ln in lines:  # continuation lines ending in a backslash
        if ln.endswith("\\") and not ln.endswith("\\\\"):
            buf += ln[:-1]
            continue
        joined.append(buf + ln)
        buf = ""
    if buf:
        joined.append(buf)

    for raw in joined:
        line = re.sub(r'\\".*$', "", raw)  # comments
        if raw.lstrip().startswith(("'\\\"", '.\\"', "\\#")) or raw.startswith(".\\#"):
            continue
        if skipping_def:
            if line.strip() == "..":
                skipping_def = False
            continue
        if in_table:
            if line.startswith(".TE"):
                in_table = False
                flush()
                nofill = False
                continue
            if table_fmt:
                if line.rstrip().endswith("."):
                    table_fmt = False
                continue
            if line.startswith((".", "'")):
                continue
            if line.strip() in ("_", "=", "T{", "T}"):
                continue
            cells = [troff_inline(c.replace("T{", "").replace("T}", "")).strip() for c in line.split("\t")]
            current.append("  ".join(c for c in cells if c))
            continue
        if line.startswith((".", "'")) and len(line) > 1:
            parts = line[1:].strip()
            m = re.match(r"(\S+)\s*(.*)$", parts)
            if not m:
                continue  # lone "."
            name, rest = m.group(1), m.group(2)
            if name in ("de", "de1", "am", "ig"):
                skipping_def = True
                continue
            if name == "TS":
                flush()
                in_table, table_fmt, nofill = True, True, True
                continue
            if name in BREAK_MACROS or name == "br":
                if name == "br":
                    if nofill:
                        continue
                    flush()
                    continue
                flush()
                if name in ("nf", "EX"):
                    nofill = True
                elif name in ("fi", "EE"):
                    nofill = False
                if name in ("SH", "SS", "Sh", "Ss"):
                    title = troff_inline(" ".join(troff_args(rest))).strip()
                    if title.upper() in ("VERTALING", "TRANSLATION", "TRANSLATOR", "VERTALERS"):
                        break  # manpages-l10n's translator credits and licence note, the same on every page
                    if title:
                        paragraphs.append(title)
                    else:
                        tag_next = True  # heading text on the next line
                elif name in ("TP", "TQ"):
                    tag_next = True
                elif name in ("IP", "It"):
                    args = troff_args(rest)
                    tag = troff_inline(args[0]).strip() if args else ""
                    if tag and tag not in ("\\(bu", "•", "-", "*"):
                        paragraphs.append(tag)
                    elif tag:
                        current.append("•")
                continue
            if name in FONT_MACROS:
                args = [troff_inline(a) for a in troff_args(rest)]
                if name in ("B", "I", "SM", "SB", "R", "CW"):
                    text = " ".join(args)
                else:
                    text = "".join(args)
                if not args:
                    continue  # font applies to the next line, which is processed as plain text
            elif name in ("UR", "MT"):
                args = troff_args(rest)
                link = troff_inline(args[0]) if args else ""
                link_at = len(current)
                continue
            elif name in ("UE", "ME"):
                # An address with no link text is printed, as man(1) does; text after it (punctuation) is glued.
                if link and len(current) == link_at:
                    current.append(f"<{link}>" if name == "ME" else link)
                link = ""
                text = " ".join(troff_inline(a) for a in troff_args(rest))
                if not text.strip():
                    continue
                if current:
                    current[-1] = current[-1] + text
                    continue
            elif name == "OP":
                args = [troff_inline(a) for a in troff_args(rest)]
                text = "[" + " ".join(args) + "]"
            elif name in ("Nm", "Ar", "Fl", "Cm", "Pa", "Xr", "Dv", "Er", "Ev", "Li", "Sy", "Em", "Nd"):
                text = " ".join(troff_inline(a) for a in troff_args(rest))
            else:
                continue  # .TH .RS .in .ft .ne .ad .na .PD .so .ds .if .ie .el ... carry no prose
        else:
            text = troff_inline(line)
            if not nofill and not text.strip():
                flush()  # an empty input line is a paragraph break in fill mode
                continue
        if tag_next:
            tag_next = False
            flush()
            if text.strip():
                paragraphs.append(text.strip())
            continue
        current.append(text)
    flush()
    return paragraphs


def man_to_doc(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    try:
        src = raw.decode("utf-8")
    except UnicodeDecodeError:
        src = raw.decode("latin-1")
    if re.match(r"\s*\.so\s", src) and len(src) < 200:
        return []  # link to another page
    return ["\n\n".join(man_to_text(src))]


# ------------------------------------------------------------------------------------------------------------
# Cleaning and deduplication.
# ------------------------------------------------------------------------------------------------------------
def clean_text(text):
    text = unicodedata.normalize("NFC", html.unescape(text) if "&" in text and ";" in text else text)
    text = text.replace("\u00a0", " ").replace("\u200b", "").replace("\ufeff", "")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    paras = []
    for p in re.split(r"\n\s*\n", text):
        lines = [re.sub(r"[ \t]+$", "", ln) for ln in p.split("\n")]
        p = "\n".join(lines).strip("\n")
        if p.strip():
            paras.append(p)
    return "\n\n".join(paras)


def normalise_for_hash(text):
    return " ".join(WORD_RE.findall(text.lower()))


def digest(text):
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class Deduper:
    """Per-language exact duplicate removal (hash of normalised text) and near-duplicate removal: a document
    is dropped when at least 90% of the characters of its paragraphs of 5 words or more are in paragraphs
    already kept in that language (the same chapter in two manual versions, a man page shipped under two
    names with one line changed). Shorter paragraphs are headings such as "Syntaxis:" that every page shares,
    so they do not count."""

    def __init__(self, threshold=0.9):
        self.docs = set()
        self.paras = set()
        self.threshold = threshold

    def add(self, text):
        """Returns None when kept, else the reason it was dropped."""
        norm = normalise_for_hash(text)
        if not norm:
            return "empty"
        h = digest(norm)
        if h in self.docs:
            return "duplicate"
        paras = [normalise_for_hash(p) for p in text.split("\n\n")]
        paras = [p for p in paras if p]
        hashes = [digest(p) for p in paras]
        long_ones = [(p, ph) for p, ph in zip(paras, hashes) if p.count(" ") >= 4] or list(zip(paras, hashes))
        total = sum(len(p) for p, _ in long_ones)
        seen = sum(len(p) for p, ph in long_ones if ph in self.paras)
        if total and seen / total >= self.threshold:
            return "near_duplicate"
        self.docs.add(h)
        self.paras.update(hashes)
        return None


# ------------------------------------------------------------------------------------------------------------
# Licences, read from each package's debian/copyright.
# ------------------------------------------------------------------------------------------------------------
def parse_dep5(text):
    stanzas, cur, key = [], {}, None
    for line in text.split("\n"):
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
            continue
        if line[0] in " \t" and key:
            cur[key] += "\n" + line.strip()
            continue
        m = re.match(r"([A-Za-z-]+):\s*(.*)$", line)
        if m:
            key = m.group(1).lower()
            cur[key] = m.group(2)
    if cur:
        stanzas.append(cur)
    return stanzas


def read_license(root, package, files_hint=None):
    """Returns (short licence name, copyright path relative to the package tree)."""
    rel = f"usr/share/doc/{package}/copyright"
    path = os.path.join(root, package, rel)
    if not os.path.exists(path):
        return "unknown", rel
    text = read_text_file(path)
    if text.startswith("Format:"):
        stanzas = [s for s in parse_dep5(text) if "files" in s and "license" in s]
        chosen = None
        if files_hint:
            chosen = next((s for s in stanzas if files_hint in s["files"]), None)
        if chosen is None:
            chosen = next((s for s in stanzas if s["files"].split() == ["*"]), None)
        if chosen is not None:
            return chosen["license"].split("\n")[0].strip(), rel
    # Free-form copyright files.
    if re.search(r"GNU GPL,? version 2|GNU General Public License,? version 2", text):
        return "GPL-2.0-only", rel
    if "Permission is granted to make and distribute verbatim copies" in text:
        return "Verbatim-copying-permissive (Debian FAQ licence, modified copies allowed)", rel
    return "unknown", rel


# ------------------------------------------------------------------------------------------------------------
# Sources.
# ------------------------------------------------------------------------------------------------------------
INSTALL_GUIDE_LANGS = ["nl", "en", "de", "fr", "es", "it", "pt", "da", "sv", "cs", "ca", "el", "ro"]
HANDBOOK_LANGS = {"nl-NL": "nl", "en-US": "en", "de-DE": "de", "fr-FR": "fr", "es-ES": "es", "it-IT": "it",
                  "pt-BR": "pt", "da-DK": "da", "sv-SE": "sv", "cs-CZ": "cs", "ca-ES": "ca", "el-GR": "el",
                  "ro-RO": "ro"}


def walk(top, suffix):
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.endswith(suffix):
                out.append(os.path.join(dirpath, fn))
    return sorted(out)


def sources(root):
    """Yields (source name, package, lang, kind, files, options). A source is one package in one language."""
    lo = os.path.join(root, "libreoffice-help-nl/usr/share/libreoffice/help/nl/text")
    yield "libreoffice-help-nl", "libreoffice-help-nl", "nl", "html", walk(lo, ".html"), {}
    ig = os.path.join(root, "installation-guide-amd64/usr/share/doc/installation-guide-amd64")
    for lang in INSTALL_GUIDE_LANGS:
        yield (f"installation-guide-amd64/{lang}", "installation-guide-amd64", lang, "html",
               walk(os.path.join(ig, lang), ".html"), {})
    for pkg in ("manpages-nl", "manpages-nl-dev"):
        yield pkg, pkg, "nl", "man", walk(os.path.join(root, pkg, "usr/share/man/nl"), ".gz"), {
            "license_hint": "po/nl/"}
    edu = os.path.join(root, "debian-edu-doc-nl/usr/share/doc/debian-edu-doc-nl")
    # Newest manual first, so that the older one's identical chapters are the ones dropped as duplicates.
    edu_files = [os.path.join(edu, f) for f in ("debian-edu-bookworm-manual.html", "debian-edu-bullseye-manual.html")]
    yield "debian-edu-doc-nl", "debian-edu-doc-nl", "nl", "html", [f for f in edu_files if os.path.exists(f)], {
        "split": ("h1", "h2"), "license_hint": "debian-edu-bookworm-manual.*.po"}
    yield "aptitude-doc-nl", "aptitude-doc-nl", "nl", "html", walk(
        os.path.join(root, "aptitude-doc-nl/usr/share/doc/aptitude/html/nl"), ".html"), {}
    yield "debian-faq-nl", "debian-faq-nl", "nl", "html", walk(
        os.path.join(root, "debian-faq-nl/usr/share/doc"), ".html"), {}
    hb = os.path.join(root, "debian-handbook/usr/share/doc/debian-handbook/html")
    for code, lang in HANDBOOK_LANGS.items():
        files = [f for f in walk(os.path.join(hb, code), ".html") if "/Common_Content/" not in f]
        yield f"debian-handbook/{lang}", "debian-handbook", lang, "html", files, {}
    yield "gimp-help-nl", "gimp-help-nl", "nl", "html", walk(
        os.path.join(root, "gimp-help-nl/usr/share/gimp/2.0/help/nl"), ".html"), {
        "license_package": "gimp-help-common"}
    yield "lilypond-doc-html-nl", "lilypond-doc-html-nl", "nl", "html", [
        f for f in walk(os.path.join(root, "lilypond-doc-html-nl/usr/share/doc/lilypond/html"), ".nl.html")
        if "big-page" not in f], {"license_hint": "Documentation/*"}


def page_docs(kind, path, opts):
    if kind == "man":
        return man_to_doc(path)
    return html_to_docs(path, opts.get("split", ()))


def count_words(text):
    return len(text.split())


def measure_share(text, by_lang):
    """Adds the words of each paragraph to its detected language ("unknown": under 10 words or no language
    reaches an 8% stopword share, e.g. code, tables, lists of options)."""
    for para in text.split("\n\n"):
        scores, n = language_scores(para)
        lang = "unknown"
        if n >= 10 and "\n" not in para:
            best = max(scores, key=lambda k: (scores[k], k))
            if scores[best] >= 0.08:
                lang = best
        w = count_words(para)
        by_lang[lang] = by_lang.get(lang, 0) + w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="folder with one dpkg -x tree per package")
    ap.add_argument("--out", required=True, help="output folder for <lang>.jsonl and manifest.json")
    ap.add_argument("--min-words", type=int, default=20, help="drop documents shorter than this")
    ap.add_argument("--log-dropped", help="write one line per dropped document (reason, source, start) here")
    args = ap.parse_args()
    dropped_log = open(args.log_dropped, "w", encoding="utf-8") if args.log_dropped else None

    os.makedirs(args.out, exist_ok=True)
    dedupers, writers, per_lang, per_source, licences = {}, {}, {}, {}, {}
    tmp_paths = {}
    for name, package, lang, kind, files, opts in sources(args.root):
        if not os.path.isdir(os.path.join(args.root, package)):
            print(f"extract_corpus: package tree {package} not found under {args.root}", file=sys.stderr)
            sys.exit(1)
        if package not in licences:
            lic_pkg = opts.get("license_package", package)
            lic, lic_path = read_license(args.root, lic_pkg, opts.get("license_hint"))
            if lic_pkg != package:
                lic_path = f"{lic_pkg}:/{lic_path}"
            licences[package] = {"license": lic, "copyright_file": lic_path}
        lic = licences[package]["license"]
        if lang not in writers:
            tmp_paths[lang] = os.path.join(args.out, f"{lang}.jsonl.tmp")
            writers[lang] = open(tmp_paths[lang], "w", encoding="utf-8")
            dedupers[lang] = Deduper()
        st = {"package": package, "lang": lang, "pages": len(files), "documents": 0, "words": 0, "bytes": 0,
              "dropped": {}, "dropped_paragraphs": 0, "dropped_paragraph_words": 0,
              "words_by_detected_lang": {}, "license": lic}
        for path in files:
            rel = os.path.relpath(path, os.path.join(args.root, package))
            docs = page_docs(kind, path, opts)
            for i, doc in enumerate(docs):
                text = clean_text(doc)
                doc_by_lang = {}
                measure_share(text, doc_by_lang)
                for k, v in doc_by_lang.items():
                    st["words_by_detected_lang"][k] = st["words_by_detected_lang"].get(k, 0) + v
                identified = sum(v for k, v in doc_by_lang.items() if k != "unknown")
                doc_share = doc_by_lang.get(lang, 0) / identified if identified else None
                kept = []
                for para in text.split("\n\n"):
                    foreign = is_foreign_paragraph(para, lang)
                    if foreign:
                        st["dropped_paragraphs"] += 1
                        st["dropped_paragraph_words"] += count_words(para)
                    else:
                        kept.append(para)
                text = "\n\n".join(kept)
                words = count_words(text)
                detected, _ = detect_language(text)
                reason = None
                if words < args.min_words:
                    reason = "too_short"
                elif doc_share is not None and doc_share < 0.5:
                    # A page that is mostly in another language (an untranslated page of a partial
                    # translation): translated fragments of it would not make a coherent document.
                    reason = "mostly_" + max((k for k in doc_by_lang if k != "unknown"), key=doc_by_lang.get)
                elif detected is not None and detected != lang:
                    reason = f"language_{detected}"
                else:
                    reason = dedupers[lang].add(text)
                if reason:
                    st["dropped"][reason] = st["dropped"].get(reason, 0) + 1
                    if dropped_log:
                        dropped_log.write(f"{reason}\t{package}:/{rel}#{i}\t{text[:200]!r}\n")
                    continue
                src = f"{package}:/{rel}" + (f"#{i}" if len(docs) > 1 else "")
                line = json.dumps({"text": text, "source": src, "lang": lang, "license": lic}, ensure_ascii=False)
                writers[lang].write(line + "\n")
                nbytes = len(text.encode("utf-8"))
                st["documents"] += 1
                st["words"] += words
                st["bytes"] += nbytes
                pl = per_lang.setdefault(lang, {"documents": 0, "words": 0, "bytes": 0})
                pl["documents"] += 1
                pl["words"] += words
                pl["bytes"] += nbytes
        by = st["words_by_detected_lang"]
        identified = sum(v for k, v in by.items() if k != "unknown")
        # Share of the identified words (paragraphs long enough to tell) that are in the expected language.
        st["share_expected_lang"] = round(by.get(lang, 0) / identified, 4) if identified else 0.0
        st["words_by_detected_lang"] = dict(sorted(by.items(), key=lambda kv: -kv[1]))
        per_source[name] = st
        print(f"  {name:32s} pages {len(files):5d}  kept {st['documents']:5d}  words {st['words']:8d}  "
              f"{lang}-share {st['share_expected_lang']:.2f}  dropped {st['dropped']}", file=sys.stderr)

    for lang, w in writers.items():
        w.close()
        os.replace(tmp_paths[lang], os.path.join(args.out, f"{lang}.jsonl"))
    manifest = {
        "description": "polder real-text corpus from Debian documentation packages (see docs/DATA.md)",
        "languages": dict(sorted(per_lang.items())),
        "sources": per_source,
        "licenses": licences,
    }
    with open(os.path.join(args.out, "manifest.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")
    os.replace(os.path.join(args.out, "manifest.json.tmp"), os.path.join(args.out, "manifest.json"))

    print(f"{'lang':6s} {'documents':>10s} {'words':>12s} {'bytes':>14s}")
    tot = {"documents": 0, "words": 0, "bytes": 0}
    for lang, c in sorted(per_lang.items(), key=lambda kv: -kv[1]["words"]):
        print(f"{lang:6s} {c['documents']:10d} {c['words']:12d} {c['bytes']:14d}")
        for k in tot:
            tot[k] += c[k]
    print(f"{'total':6s} {tot['documents']:10d} {tot['words']:12d} {tot['bytes']:14d}")


if __name__ == "__main__":
    main()
