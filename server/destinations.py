"""Where the node may send a job's webhook: public addresses only, unless the
operator allows more.

A webhook URL comes from whoever creates the job, and a worker POSTs to it
from inside the operator's network. Unchecked, a caller could make the node
reach its loopback services, the cloud metadata endpoint (169.254.169.254)
or anything on the private network (server-side request forgery). So, as
Stripe's Smokescreen and the `advocate` library for requests do:

- when a job is created or retried (cheap, no DNS): a URL whose host is a
  literal address, or `localhost` or a name under it (RFC 6761), that is not
  public is refused at once (`check_url`, 400);
- at each delivery attempt (`resolve`): the host name is resolved once,
  every address that is not public is dropped, and the request goes to an
  address that was kept, with the name kept in `Host` and in TLS (SNI and
  the certificate check) (worker/webhook.py), so a name that resolves
  differently a moment later (DNS rebinding) changes nothing. No address
  kept: the delivery fails for good with `webhook_refused`. Redirects are
  not followed at all (worker/webhook.py says why).

Not public: what `ipaddress` does not call global (loopback, private
10/8 172.16/12 192.168/16 fc00::/7, link-local 169.254/16 fe80::/10 where
cloud metadata answers, carrier-grade NAT 100.64/10, "this network" 0/8,
documentation, benchmarking and reserved ranges), and multicast. An
IPv4-mapped IPv6 address (::ffff:127.0.0.1) is judged as the IPv4 address
it maps. WEBHOOK_ALLOW_NETWORKS (CIDRs) lets addresses through, and
WEBHOOK_ALLOW_HOSTS names hosts (`*.suffix` for every name under one) whose
addresses are not checked at all, for operators with internal receivers.
"""

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from server.errors import BadInput, PeerRefused, PeerUnavailable

if TYPE_CHECKING:
    from server.config import Settings  # config reads its lists with this module's parsers

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSED = "webhook_refused"  # the job error's code
ALLOW_HINT = "an operator can allow it with WEBHOOK_ALLOW_NETWORKS or WEBHOOK_ALLOW_HOSTS"
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")  # and every name under .localhost
_HOST = re.compile(r"(\*\.)?[a-z0-9\-._]+|\[?[0-9a-f:.]+\]?", re.IGNORECASE)  # a name, *.suffix, or an address


def _judged(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: Address) -> bool:
    address = _judged(address)
    return address.is_global and not address.is_multicast


def kind(address: Address) -> str:
    """What an address that is not public is, in a word or two."""
    address = _judged(address)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    return "non-public"


def _name(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _loopback_name(host: str) -> bool:
    name = _name(host)
    return name in LOOPBACK_NAMES or name.endswith(".localhost")


def _literal(host: str) -> list[Address]:
    """The addresses `host` stands for without asking DNS: a numeric address
    in any form the C library accepts ("127.1" and "2130706433" included),
    or a loopback name; none for a name DNS must resolve."""
    name = _name(host)
    if _loopback_name(name):
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    try:
        infos = socket.getaddrinfo(name.strip("[]"), None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return []
    return _addresses(infos)


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[Address]:
    seen: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])  # no IPv6 zone
            if address not in seen:
                seen.append(address)
    return seen


def allowed_host(entry: str) -> str:
    """One WEBHOOK_ALLOW_HOSTS entry, as matched; ValueError names a malformed one."""
    if not _HOST.fullmatch(entry.strip()):
        raise ValueError(f"{entry!r} is not a host name (e.g. hooks.internal, *.svc.cluster.local)")
    return _name(entry)


def allowed_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One WEBHOOK_ALLOW_NETWORKS entry; ValueError names a malformed one."""
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP network (e.g. 10.0.0.0/8, fd00::/8, 127.0.0.1)") from None


class Destinations:
    """The webhook receivers the node may reach."""

    def __init__(self, hosts: Iterable[str] = (), networks: Iterable[str] = ()):
        names = [allowed_host(h) for h in hosts if h.strip()]
        self.hosts = {n for n in names if not n.startswith("*.")}
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # ".svc.cluster.local"
        self.networks = [allowed_network(n) for n in networks if n.strip()]

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Destinations":
        """Read by the functions that checked the settings at start."""
        return cls(settings.webhook_allow_hosts.split(","), settings.webhook_allow_networks.split(","))

    def host_allowed(self, host: str) -> bool:
        name = _name(host).strip("[]")
        return name in self.hosts or f"[{name}]" in self.hosts or any(name.endswith(s) for s in self.suffixes)

    def address_allowed(self, address: Address) -> bool:
        if is_public(address):
            return True
        candidates = {address, _judged(address)}
        return any(a.version == net.version and a in net for a in candidates for net in self.networks)

    def check_url(self, url: str) -> None:
        """At create time: refuses a URL whose host is plainly not public."""
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        if not host:
            raise BadInput("input.webhook_url has no host", code=REFUSED)
        if self.host_allowed(host):
            return
        addresses = _literal(host)
        if addresses and not any(self.address_allowed(a) for a in addresses):
            raise BadInput(
                f"input.webhook_url points to a {kind(addresses[0])} address, where the node does not send "
                f"webhooks; {ALLOW_HINT}",
                code=REFUSED,
            )

    async def resolve(self, host: str, port: int, *, timeout: float = 10.0) -> list[str]:
        """At delivery: the addresses of `host` the node may connect to, in
        the resolver's order. Raises PeerRefused when there is none, and
        PeerUnavailable (worth trying again) when the name does not resolve."""
        allowed_by_name = self.host_allowed(host)
        literal = _literal(host)
        if literal and not allowed_by_name and not any(self.address_allowed(a) for a in literal):
            raise self._refused(host)
        if literal and not _loopback_name(host):
            addresses = literal
        else:
            try:
                async with asyncio.timeout(timeout):
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        _name(host).strip("[]"), port, type=socket.SOCK_STREAM
                    )
            except (socket.gaierror, UnicodeError, TimeoutError):
                raise PeerUnavailable(f"webhook host {host} does not resolve", code="webhook_failed") from None
            addresses = _addresses(infos)
        kept = addresses if allowed_by_name else [a for a in addresses if self.address_allowed(a)]
        if not kept:
            raise self._refused(host)
        return [str(a) for a in kept]

    @staticmethod
    def _refused(host: str) -> PeerRefused:
        # Which kind of address a name has is the operator's to know, not the caller's.
        return PeerRefused(
            f"webhook host {host} has no public address, and the node sends webhooks only to public ones; "
            f"{ALLOW_HINT}",
            code=REFUSED,
        )
