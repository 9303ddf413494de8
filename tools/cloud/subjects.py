"""The cloud's names: sites, subjects, streams, and what a site may touch.

Everything a site exports lies under ``aiot.<site>.``, in the site's own
stream ``AIOT_SITE_<SITE>`` (health and status in ``AIOT_HEALTH_<SITE>``;
docs/cloud.md "Subjects"):

    aiot.<site>.readings.<device>    committed readings
    aiot.<site>.decisions.<device>   decisions with their provenance
    aiot.<site>.commands.<device>    commands, their states and results
    aiot.<site>.alerts.<device>      alerts and their acknowledgements
    aiot.<site>.devices.<device>     the device registry's changes
    aiot.<site>.health.<node>        node health
    aiot.<site>.status               what the site runs, its export lag

A site's login may publish only there, read only its own stream, and read
(never write) the buckets that carry models and policies down.
"""

from __future__ import annotations

from typing import Final

from protocol import cloud
from protocol.cloud import MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET

JS_DOMAIN: Final = "aiot-cloud"  # the cloud's JetStream domain (a leaf node's way to its API)


def check_site(site: str) -> str:
    """``site`` when it is a valid site id; ValueError (the reason) when not."""
    return cloud.check_site(site)


def site_subjects(site: str) -> str:
    return f"{cloud.PREFIX}.{check_site(site)}.>"


def site_stream(site: str) -> str:
    return cloud.stream_name(site)


def site_user(site: str) -> str:
    return f"site-{check_site(site)}"


def site_permissions(site: str) -> dict[str, dict[str, list[str]]]:
    """What a site's login may publish and subscribe to.

    Publish: its own subjects; the JetStream API calls that read its own
    stream (info, and a message by sequence, for the tail after a failover);
    the calls that read the two buckets (info, direct gets, an ordered
    consumer to watch them, flow control and acks of those consumers).
    Subscribe: its inboxes only.
    """
    pub = [site_subjects(site)]
    for api in ("$JS.API", f"$JS.{JS_DOMAIN}.API"):
        pub += _api_permissions(site, api)
    pub += [f"$JS.ACK.KV_{POLICIES_BUCKET}.>", f"$JS.ACK.OBJ_{MODELS_BUCKET}.>"]
    pub += [f"$JS.FC.KV_{POLICIES_BUCKET}.>", f"$JS.FC.OBJ_{MODELS_BUCKET}.>"]
    pub += [f"$KV.{SITES_BUCKET}.{check_site(site)}"]  # its own report, no other
    return {"publish": {"allow": pub}, "subscribe": {"allow": ["_INBOX.>"]}}


def _api_permissions(site: str, api: str) -> list[str]:
    stream = site_stream(site)
    pub = [f"{api}.INFO"]
    pub += [f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}"]
    pub += [f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>"]
    for bucket in (f"KV_{POLICIES_BUCKET}", f"OBJ_{MODELS_BUCKET}"):
        pub += [f"{api}.STREAM.INFO.{bucket}", f"{api}.STREAM.MSG.GET.{bucket}"]
        pub += [f"{api}.DIRECT.GET.{bucket}", f"{api}.DIRECT.GET.{bucket}.>"]
        pub += [f"{api}.CONSUMER.CREATE.{bucket}", f"{api}.CONSUMER.CREATE.{bucket}.>"]
        pub += [f"{api}.CONSUMER.DELETE.{bucket}.>", f"{api}.CONSUMER.INFO.{bucket}.>"]
    pub += [f"{api}.STREAM.INFO.KV_{SITES_BUCKET}"]
    pub += [f"{api}.STREAM.NAMES"]  # the KV and object store clients look a bucket up by name
    return pub
