"""Finding personal data and secrets in a string: regexes for candidates, validators for the truth.

A regex alone over-matches (every 16-digit number is not a card), so each kind has a check:
- email: a domain with a real-looking TLD (not a file extension: `icon@2x.png` is not an address);
- phone: `+` and 8-15 digits, or the North-American shape (area code 2-9) with separators;
  bare digit runs are never phones (they are ids, amounts, dates);
- ip_address: parsed by `ipaddress`; by default only globally routable addresses count
  (127.0.0.1, 10.x, 192.168.x, ::1 are everywhere in tutorials and identify nobody); a
  four-part number right after "version", "revision", "section", "v", … is not an address, other
  dotted quads that parse as routable addresses are reported;
- credit_card: 13-19 digits, unbroken or grouped as cards are printed (4-4-4-4, 4-6-5), with a
  known issuer prefix and a valid Luhn checksum;
- iban: country code + the country's registered length + ISO 7064 mod-97 check;
- secret: API-key shapes (OpenAI/Stripe `sk-`/`sk_`, AWS `AKIA…` and secret keys, GitHub `ghp_…`,
  Slack `xox…`, Google `AIza…`, `Bearer <token>`, PEM private keys); random-looking tokens only
  (letters and digits mixed), so `Bearer YOUR_TOKEN_HERE` is left alone.
Overlaps are resolved by priority (secret, email, iban, credit_card, ip_address, phone).
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
PII_TYPES = ("secret", "email", "iban", "credit_card", "ip_address", "phone")  # priority order
PLACEHOLDERS = {t: f"<{t.upper()}>" for t in PII_TYPES}

_FILE_EXTENSIONS = {"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "css", "js", "ts", "py", "json",
                    "html", "htm", "txt", "md", "pdf", "zip", "gz", "tar", "mp3", "mp4", "wav", "exe", "dll"}

# IBAN lengths by country (SWIFT IBAN registry)
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """ISO 13616: registered length for the country and (rearranged, letters as numbers) mod 97 == 1."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _mixed(token: str) -> bool:
    """Random-looking: has both letters and digits (placeholders like YOUR_API_KEY have no digits)."""
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def _card_ok(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if not 13 <= len(digits) <= 19 or not luhn_ok(digits):
        return False
    # issuer prefixes: Visa 4, Mastercard 51-55/2221-2720, Amex 34/37, Discover 6011/65/644-649,
    # Diners 36/38/300-305, JCB 35, UnionPay 62, Maestro 50/56-58/63/67
    return bool(re.match(r"4|5[0-8]|2[2-7]|3[4-8]|30[0-5]|6[0-7]", digits))


def _email_ok(s: str) -> bool:
    return s.rsplit(".", 1)[-1].lower() not in _FILE_EXTENSIONS


def _phone_ok(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if s.lstrip().startswith("+"):
        return 8 <= len(digits) <= 15
    return len(digits) in (10, 11)


@dataclass(frozen=True)
class Detector:
    kind: str
    hint: str  # a Rust regex (polars) found inside every match of `pattern`: rows without it skip this detector
    pattern: re.Pattern
    check: Callable[[str], bool] | None = None
    group: int = 0  # the part of the match that is redacted (e.g. the token after "Bearer")


def _ip_check(global_only: bool) -> Callable[[str], bool]:
    def ok(s: str) -> bool:
        try:
            ip = ipaddress.ip_address(s)
        except ValueError:
            return False
        if not global_only:
            return True
        # global unicast IPv6 is 2000::/3: without this, code such as `dead::beef` would parse as global
        return ip.is_global and (ip.version == 4 or ip in _GLOBAL_UNICAST_V6)

    return ok


def detectors(global_ips_only: bool = True) -> list[Detector]:
    ip_ok = _ip_check(global_ips_only)
    return [
        Detector("secret", r"BEGIN [A-Z ]*PRIVATE KEY", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )?PRIVATE KEY-----")),
        Detector("secret", r"sk[-_]", re.compile(r"(?<![\w-])sk[-_](?:proj-|live_|test_|ant-)?[A-Za-z0-9_-]{20,}"), _mixed),
        Detector("secret", r"A[KSGIRN][IPDON]A[A-Z0-9]{16}", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}(?![A-Z0-9])")),
        Detector("secret", r"(?i:aws_secret)", re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"), _mixed, 1),
        Detector("secret", r"gh[pousr]_", re.compile(r"(?<!\w)gh[pousr]_[A-Za-z0-9]{36,}")),
        Detector("secret", r"xox[abprs]-", re.compile(r"(?<!\w)xox[abprs]-[A-Za-z0-9-]{10,}"), _mixed),
        Detector("secret", r"AIza", re.compile(r"(?<!\w)AIza[0-9A-Za-z_-]{35}")),
        Detector("secret", r"[Bb]earer\s", re.compile(r"\b[Bb]earer\s+([A-Za-z0-9._~+/-]{20,}=*)"), _mixed, 1),
        Detector("email", r"@", re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])"),
                 _email_ok),
        Detector("iban", r"[A-Z]{2}\d{2}", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")),  # trimmed to length in find_pii
        # printed the way cards are: one run of digits, or groups 4-4-4-(1..7) / 4-6-4(5) with one separator
        Detector("credit_card", r"\d(?:[ -]?\d){12}", re.compile(r"(?<![\d.,-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5})"
                                           r"(?![\d-]|[.,]\d)"), _card_ok),
        Detector("ip_address", r"\d\.\d{1,3}\.\d", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)(?!\w)"), ip_ok),
        Detector("ip_address", r"[0-9A-Fa-f]:[0-9A-Fa-f:]*:|::", re.compile(
            r"(?<![\w:.])(?:(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})"
            r"|::[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})(?![\w:])"), ip_ok),
        Detector("phone", r"\+\d", re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w])"), _phone_ok),
        Detector("phone", r"\d{3}[ .)-]+\d{3}[ .-]\d{4}", re.compile(r"(?<![\w.+-])(?:1[ .-])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}(?![\w-])"),
                 _phone_ok),
    ]


# One broad Rust-regex pattern (polars) that every finding above also matches: rows not matching
# it are skipped without running Python.
PREFILTER = "|".join(d.hint for d in detectors())


_NUMBERING = re.compile(r"(?i)(?:section|sect?\.|revision|rev\.?|version|ver\.?|release|chapter|§|\bv)\s*$")


def _iban_span(text: str, start: int) -> int | None:
    """End of a valid IBAN starting at `start` (spaces allowed between characters), else None."""
    want = _IBAN_LENGTHS.get(text[start:start + 2])
    if want is None:
        return None
    chars, i = [], start
    while i < len(text) and len(chars) < want:
        c = text[i]
        if c.isalnum() and c.isascii():
            chars.append(c)
        elif c != " ":
            break
        i += 1
    if len(chars) != want or (i < len(text) and text[i].isalnum()):
        return None
    return i if iban_ok("".join(chars).upper()) else None


def find_pii(text: str, dets: list[Detector], kinds: set[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) findings, in text order."""
    taken: list[tuple[int, int, str]] = []

    def free(s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b, _ in taken)

    for det in dets:
        if det.kind not in kinds:
            continue
        for m in det.pattern.finditer(text):
            s, e = m.span(det.group)
            if det.kind == "iban":
                end = _iban_span(text, s)
                if end is None:
                    continue
                e = end
            elif det.check is not None and not det.check(m.group(det.group)):
                continue
            elif det.kind == "ip_address" and _NUMBERING.search(text, max(0, s - 16), s):
                continue  # "section 2.4.3.5", "revision 1.17.2.7": dotted numbering, not an address
            if free(s, e):
                taken.append((s, e, det.kind))
    return sorted(taken)


def redact(text: str, found: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for s, e, kind in found:
        out.append(text[last:s])
        out.append(PLACEHOLDERS[kind])
        last = e
    out.append(text[last:])
    return "".join(out)
