"""resolv.conf parsed as glibc parses it, and the query plan glibc's res_search follows for a name.

References: glibc resolv/res_init.c (parsing, limits) and resolv/res_query.c (__res_context_search).
"""

from __future__ import annotations

import ipaddress

from bundle.models import Candidate, ResolvConf, ResolvOptions

MAXNS = 3
_LIMITS = {"ndots": 15, "timeout": 30, "attempts": 5}  # RES_MAXNDOTS, RES_MAXRETRANS, RES_MAXRETRY
_FLAGS = {
    "rotate": "rotate", "single-request": "single_request", "single-request-reopen": "single_request_reopen",
    "edns0": "edns0", "use-vc": "use_vc", "trust-ad": "trust_ad", "no-aaaa": "no_aaaa",
    "no-tld-query": "no_tld_query",
}
_KEYWORDS = ("nameserver", "domain", "search", "options", "sortlist")
_KNOWN_IGNORED = {"debug", "no-check-names", "inet6", "ip6-bytestring", "ip6-dotint", "no-ip6-dotint",
                  "insecure1", "insecure2", "no-reload"}


def parse(text: str, path: str = "/etc/resolv.conf", hostname: str | None = None) -> ResolvConf:
    """Keywords at the start of a line; ';' or '#' there starts a comment; the last domain/search wins.
    With neither domain nor search, glibc searches the domain part of the hostname, if it has one."""
    nameservers: list[str] = []
    ignored: list[str] = []
    search: list[str] | None = None
    values: dict[str, int | bool] = {}
    unknown: list[str] = []
    for line in text.splitlines():
        # glibc's MATCH(): the keyword starts the line and a blank follows it; an indented line is ignored,
        # and ';' or '#' start a comment only at the start of a line.
        if not line or line[0] in ";#":
            continue
        keyword = next((k for k in _KEYWORDS if line.startswith(k) and line[len(k):len(k) + 1] in (" ", "\t")), None)
        if keyword is None:
            continue
        words = line[len(keyword):].split()
        if keyword == "nameserver" and words:
            try:
                addr = str(ipaddress.ip_address(words[0].split("%")[0]))
            except ValueError:
                continue  # glibc skips an address it cannot parse
            (nameservers if len(nameservers) < MAXNS else ignored).append(addr)
        elif keyword == "domain" and words:
            search = [words[0]]
        elif keyword == "search":
            search = [w for w in words if w]
        elif keyword == "options":
            for word in words:
                name, _, arg = word.partition(":")
                if name in _LIMITS:
                    try:
                        values[name] = min(int(arg), _LIMITS[name])
                    except ValueError:
                        unknown.append(word)
                elif name in _FLAGS:
                    values[_FLAGS[name]] = True
                elif name not in _KNOWN_IGNORED:
                    unknown.append(word)
    if search is None:
        search = [hostname.split(".", 1)[1]] if hostname and "." in hostname.strip(".") else []
    defaulted = not nameservers
    return ResolvConf(
        path=path, nameservers=nameservers or ["127.0.0.1"], ignored_nameservers=ignored,
        search=[s.rstrip(".") or "." for s in search], options=ResolvOptions(**values),  # type: ignore[arg-type]
        unknown_options=unknown, defaulted_nameserver=defaulted,
    )


def candidates(name: str, conf: ResolvConf) -> list[str]:
    """The names __res_context_search tries, in order, if every one fails with NXDOMAIN or NODATA."""
    if name.endswith("."):
        return [name.rstrip(".")]  # absolute: as-is only
    dots = name.count(".")
    out: list[str] = []
    tried_as_is = False
    if dots >= conf.options.ndots:
        out.append(name)
        tried_as_is = True
    root_on_list = False
    # Not absolute: glibc walks the search list (RES_DEFNAMES for no dots, RES_DNSRCH otherwise; both default on).
    for domain in conf.search:
        if domain == ".":
            root_on_list = True
            out.append(name)
            continue
        out.append(f"{name}.{domain}")
    if not (tried_as_is or root_on_list) and (dots or not conf.options.no_tld_query):
        out.append(name)
    # glibc never asks the same name twice in one search
    return list(dict.fromkeys(out))


def walks(name: str, conf: ResolvConf, families: list[str]) -> list[list[Candidate]]:
    """The search-list walks getaddrinfo makes, in order. One walk asking every family per candidate; but on a
    host with only IPv6 configured, AI_ADDRCONFIG narrows the lookup to AF_INET6, and with AI_V4MAPPED (as
    getent and Go's cgo resolver ask) glibc walks the list for AAAA, then again for A when no AAAA came back
    (gaih_inet's `!got_ipv6`)."""
    qtypes = [f for f in families if not (f == "AAAA" and conf.options.no_aaaa)]
    names = candidates(name, conf)
    if qtypes == ["AAAA"]:
        return [[Candidate(name=c, qtypes=["AAAA"]) for c in names], [Candidate(name=c, qtypes=["A"]) for c in names]]
    return [[Candidate(name=c, qtypes=qtypes) for c in names]]


def plan(name: str, conf: ResolvConf, families: list[str]) -> list[Candidate]:
    """Every step of every walk: the full plan glibc follows when every step fails."""
    return [c for walk in walks(name, conf, families) for c in walk]
