"""Reserved identity names (mParticle's list) and the priority in which they resolve a profile."""

from __future__ import annotations

USER_IDENTITIES: tuple[str, ...] = (
    "customer_id",
    "email",
    "mpid",
    "facebook",
    "twitter",
    "google",
    "microsoft",
    "yahoo",
    "facebook_custom_audience_id",
    "other",
    *(f"other_id_{n}" for n in range(2, 11)),
    "mobile_number",
    "phone_number_2",
    "phone_number_3",
)

DEVICE_IDENTITIES: tuple[str, ...] = (
    "android_uuid",
    "ios_advertising_id",
    "push_token",
    "ios_idfv",
    "android_advertising_id",
    "amp_id",
    "roku_advertising_id",
    "roku_publisher_id",
    "microsoft_advertising_id",
    "microsoft_publisher_id",
    "fire_advertising_id",
    "mp_deviceid",
)

# Resolution order: customer_id, then email, then the rest as listed.
IDENTITY_PRIORITY: tuple[str, ...] = USER_IDENTITIES + DEVICE_IDENTITIES

# Column names that auto-map to an identity, lower-cased; customerid is mParticle's alias.
RESERVED_COLUMN_NAMES: dict[str, str] = {name: name for name in IDENTITY_PRIORITY} | {
    "customerid": "customer_id"
}


def identity_for_column(column: str) -> str | None:
    """The identity a column auto-maps to, matched case-insensitively, or None."""
    return RESERVED_COLUMN_NAMES.get(column.lower())


def priority(identity_type: str) -> int:
    """Rank of an identity type: lower resolves first."""
    return IDENTITY_PRIORITY.index(identity_type)
