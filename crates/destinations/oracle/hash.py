"""Reference hashes for `meridian hash`, from the platforms' own code and rules.

Usage: hash.py PLATFORM FIELD [DEFAULT_REGION] < values.jsonl
Each input line is a JSON string; each output line is the SHA-256 hex the platform
would receive for it, or an empty line when the platform would reject the value.

- meta: the `facebook-business` SDK itself, `CustomAudienceMixin.format_params` with a
  multi-key schema and is_raw=True (the path `CustomAudience.add_users` takes). A value
  whose normalized key (the SDK's own strip/lower/`normalize_key`) is empty counts as
  rejected.
- google: Google's documented Customer Match rules, as written in the
  `normalize_and_hash` / `normalize_and_hash_email_address` helpers of the Google Ads API
  examples; phone numbers to E.164 with `phonenumbers` (libphonenumber).
- tiktok: TikTok's customer-file rules (lowercase email without `+tag`; phone digits with
  country code, no `+`), phone numbers with `phonenumbers`.
"""

import hashlib
import json
import re
import sys

import phonenumbers
from facebook_business.adobjects.customaudience import CustomAudience

META_SCHEMA = {
    "email": "EMAIL",
    "phone": "PHONE",
    "first_name": "FN",
    "last_name": "LN",
    "city": "CT",
    "state": "ST",
    "zip": "ZIP",
    "country": "COUNTRY",
}


def sha(value):
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def meta(field, values, region):
    schema = META_SCHEMA[field]
    out = []
    for value in values:
        if field == "phone" and region:
            key = value.strip(" \t\r\n\0\x0B.").lower()
            if not (key.startswith("+") or key.startswith("00")):
                number = e164(key, region)
                if number is not None:
                    value = number
        key = CustomAudience.normalize_key(schema, value.strip(" \t\r\n\0\x0B.").lower())
        if not key:
            out.append("")
            continue
        params = CustomAudience.format_params([schema], [[value]], is_raw=True)
        out.append(params["payload"]["data"][0][0])
    return out


def e164(raw, region):
    # libphonenumber's extractPossibleNumber; `00` is then read as `+` when no region says
    # otherwise (Meridian's rule, applied the same way on both sides).
    raw = re.sub(r"^[^+\uff0b0-9]+", "", raw.strip())
    if raw.startswith("00") and not region:
        raw = "+" + raw[2:]
    try:
        number = phonenumbers.parse(raw, region.upper() if region else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def google(field, value, region):
    if field == "email":
        normalized = value.strip().lower()
        parts = normalized.split("@")
        if len(parts) < 2 or not parts[0] or not "@".join(parts[1:]):
            return None
        # The examples' rule: dots before the @ go for gmail.com / googlemail.com.
        if re.match(r"^(gmail|googlemail)\.com$", parts[1]) and len(parts) == 2:
            parts[0] = parts[0].replace(".", "")
            normalized = "@".join(parts)
        return normalized
    if field == "phone":
        return e164(value.strip(), region)
    normalized = value.strip().lower()
    if field == "country" and not re.fullmatch(r"[a-z]{2}", normalized):
        return None
    return normalized


def tiktok(field, value, region):
    if field == "email":
        normalized = value.strip().lower()
        if "@" not in normalized:
            return None
        local, domain = normalized.split("@", 1)
        local = local.split("+")[0]
        if not local or not domain:
            return None
        return local + "@" + domain
    if field == "phone":
        number = e164(value.strip(), region)
        return None if number is None else re.sub(r"[^0-9]", "", number)
    return None


def main():
    platform, field = sys.argv[1], sys.argv[2]
    region = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
    values = [json.loads(line) for line in sys.stdin if line.strip()]
    if platform == "meta":
        hashes = meta(field, values, region)
    else:
        rule = google if platform == "google" else tiktok
        hashes = []
        for value in values:
            normalized = rule(field, value, region)
            hashes.append(sha(normalized) if normalized else "")
    sys.stdout.write("".join(h + "\n" for h in hashes))


if __name__ == "__main__":
    main()
