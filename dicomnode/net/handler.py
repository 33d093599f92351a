"""How an application plugs into the listener (``scp.StoreSCP``).

The listener owns the wire: PDUs, negotiation, deadlines, slots, the size limit, C-ECHO. It
asks the application three things through a ``Handler``, each from the association's thread,
and a fourth, optional one from its accept loop:

- ``address_allowed`` (optional; without it every address is): may a peer at this IP address
  associate at all? Asked at TCP accept, before anything is read, so that a refused address
  takes a slot from the listener's small budget for refused connections and never one of the
  pending slots that allowed peers need. It must be quick and must not block.
- ``association_requested``: a peer asks for an association (who, from where): None accepts,
  a ``Rejection`` is sent as the A-ASSOCIATE-RJ. Asked before the association takes a slot.
- ``instance_arrived``: a C-STORE's dataset arrived whole (as a Part 10 file: preamble, our
  file meta, the dataset as received) with its context; the ``StoreStatus`` returned is the
  C-STORE response.
- ``association_ended``: an accepted association ended, released by the peer or not; called
  after its slot was given back.

``AccessPolicy`` answers the first two: our AE title, and optionally the calling AE titles and
source networks allowed (``address_allowed`` at accept, ``check`` once the request is read).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from dicomnode.net import acse

# DIMSE statuses (PS3.7 C, PS3.4 B.2.3) the listener answers itself or that handlers return
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
UNRECOGNIZED_OPERATION = 0x0211
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Association:
    """An association as the application sees it."""

    id: str  # unique across the node's processes
    calling_ae: str
    called_ae: str
    peer: str  # the peer's IP address
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ (``acse.REJECT_*``, ``acse.SOURCE_*`` and the source's reasons) and
    what the log says about it."""

    result: int
    source: int
    reason: int
    message: str


@dataclass(frozen=True)
class Arrival:
    """One C-STORE request whose dataset arrived whole."""

    association: Association
    context_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str  # the presentation context's
    data: bytes  # Part 10: preamble, file meta (ours), the dataset exactly as received


@dataclass(frozen=True)
class StoreStatus:
    status: int
    comment: str | None = None  # ErrorComment of a failure, at most 64 characters are sent


class Handler(Protocol):
    # optional: def address_allowed(self, peer: str) -> bool (see the module's docstring)

    def association_requested(self, association: Association) -> Rejection | None: ...

    def instance_arrived(self, arrival: Arrival) -> StoreStatus: ...

    def association_ended(self, association: Association, released: bool) -> None: ...


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessPolicy:
    """Who may associate: the called AE title must be ours; where lists are given, the calling
    AE title and the source address must be on them."""

    def __init__(
        self,
        ae_title: str,
        calling_ae_titles: Iterable[str] = (),
        source_networks: Iterable[str | Network] = (),
    ):
        self.ae_title = ae_title
        self.calling_ae_titles = set(calling_ae_titles)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in source_networks]

    def check(self, association: Association) -> Rejection | None:
        if self.calling_ae_titles and association.calling_ae not in self.calling_ae_titles:
            return Rejection(
                acse.REJECT_PERMANENT,
                acse.SOURCE_SERVICE_USER,
                acse.USER_CALLING_AE_NOT_RECOGNISED,
                "calling AE title not allowed",
            )
        if self.networks and not self.address_allowed(association.peer):
            return Rejection(
                acse.REJECT_PERMANENT,
                acse.SOURCE_SERVICE_USER,
                acse.USER_NO_REASON,
                "source address not allowed",
            )
        if association.called_ae != self.ae_title:
            return Rejection(
                acse.REJECT_PERMANENT,
                acse.SOURCE_SERVICE_USER,
                acse.USER_CALLED_AE_NOT_RECOGNISED,
                "called AE title is not ours",
            )
        return None

    def address_allowed(self, address: str) -> bool:
        """Whether ``address`` is in one of the source networks (True when none are set)."""
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)
