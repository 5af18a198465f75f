"""Build ``data/catalog.csv`` from the reference ``gpu_prices.csv``, normalising its quirks.

Run it again when the reference file changes::

    python -m providers.prices.build_catalog PATH/TO/gpu_prices.csv

Every rule below is a quirk found in the reference file; SOURCES.md (beside the catalog) lists
them with the reasons. A test rebuilds the catalog from the reference (when it is present) and
checks that the result is byte-for-byte the bundled file, so the two never drift apart.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from providers.prices.catalog import gpu_unusable, host_unusable

DATA_DIR = Path(__file__).resolve().parent / "data"
CATALOG_PATH = DATA_DIR / "catalog.csv"

COLUMNS = ("provider", "region", "instance_type", "gpu", "gpu_count", "vcpus", "memory_gib",
           "on_demand", "spot", "spot_zone", "price_basis", "interruption_band", "status",
           "notes", "source")

# GCP accelerator type names, for the GPU-only ("(attachable)") rows.
GCP_ACCELERATOR_TYPES = {"T4": "nvidia-tesla-t4", "P4": "nvidia-tesla-p4",
                         "P100": "nvidia-tesla-p100", "V100": "nvidia-tesla-v100"}

# Ground truth where the reference is wrong (Azure docs: ND H100 v5 = 8 x H100 80 GB).
GPU_COUNT_FIXES = {("azure", "Standard_ND96isr_H100_v5"): 8}

# Azure NC (v1, K80) was retired on 2023-08-31: no longer launchable.
RETIRED = {("azure", t): "retired 2023-08-31 (Azure NC-series v1, K80)"
           for t in ("Standard_NC6", "Standard_NC12", "Standard_NC24", "Standard_NC24r")}

# Clouds whose reference rows fill a missing spot price with the on-demand one (Azure's export):
# an equal spot price there means "unknown", not "no discount".
SPOT_FILLED_FROM_ON_DEMAND = frozenset({"azure"})

# Interruption bands known from the public sources in api_examples/ (AWS Spot Instance Advisor
# data, Azure Resource Graph SpotResources). Canonical labels, see estimate.INTERRUPTION_BANDS.
INTERRUPTION_BANDS = {
    ("aws", "us-east-1", "p3.2xlarge"): ">20%",      # spot advisor r=4
    ("aws", "us-east-1", "g4dn.xlarge"): "5-10%",    # spot advisor r=1
    ("azure", "eastus", "Standard_NC4as_T4_v3"): "0-5%",  # resource graph evictionRate "0-5"
}

# Rows whose on-demand price is far from the same type in the other region; kept as given.
OUTLIER_NOTE = "on-demand differs >2x from the other region's; unverified, kept as given"


def _num(text: str) -> str:
    """A price or size as written in the reference, or '' when empty ('3.0600' stays as is)."""
    return text.strip()


def _int(text: str) -> str:
    text = text.strip()
    return str(int(float(text))) if text else "0"


def normalise(reference_csv: str) -> list[dict[str, str]]:
    """The catalog rows for the text of ``gpu_prices.csv``."""
    rows: list[dict[str, str]] = []
    for src in csv.DictReader(io.StringIO(reference_csv)):
        provider = src["cloud"].strip()
        itype = src["instance_type"].strip()
        gpu = src["accelerator_name"].strip()
        count = _int(src["accelerator_count"])
        notes: list[str] = []
        basis = src["price_basis"].strip()
        status = "available"
        if itype == "(attachable)":
            # GPU-only price for attaching to an N1 VM: no machine type, no host VM price.
            itype = f"n1+{GCP_ACCELERATOR_TYPES[gpu]}x{count}"
            basis = "gpu_only"
            notes.append("GPU-only price; the n1 host VM is not included")
        fix = GPU_COUNT_FIXES.get((provider, itype))
        if fix is not None and int(count) != fix:
            notes.append(f"gpu_count {count} in the reference, {fix} per Azure docs")
            count = str(fix)
        on_demand = _num(src["on_demand_usd_per_hour"])
        spot = _num(src["spot_usd_per_hour"])
        if provider in SPOT_FILLED_FROM_ON_DEMAND and spot and on_demand and float(spot) == float(on_demand):
            notes.append("spot equal to on-demand in the reference (a fill-in, not a spot "
                         "price): spot unknown")
            spot = ""
        if not on_demand:
            notes.append("no on-demand price in the reference")
        if not spot:
            if "spot unknown" not in "".join(notes):
                notes.append("no spot price in the reference")
        if (provider, itype) in RETIRED:
            status = "retired"
            notes.append(RETIRED[(provider, itype)])
        notes += [why for why in (host_unusable(gpu), gpu_unusable(gpu)) if why]
        rows.append({
            "provider": provider, "region": src["region"].strip(), "instance_type": itype,
            "gpu": gpu, "gpu_count": count, "vcpus": _int(src["vcpus"]),
            "memory_gib": _num(src["memory_gib"]) or "0", "on_demand": on_demand, "spot": spot,
            "spot_zone": src["spot_zone"].strip(), "price_basis": basis,
            "interruption_band": INTERRUPTION_BANDS.get((provider, src["region"].strip(), itype),
                                                        ""),
            "status": status, "notes": "; ".join(notes), "source": src["source"].strip()})
    _mark_outliers(rows)
    rows.sort(key=lambda r: (r["provider"], r["gpu"], int(r["gpu_count"]), r["instance_type"],
                             r["region"]))
    return rows


def _mark_outliers(rows: list[dict[str, str]]) -> None:
    by_type: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        if row["on_demand"]:
            by_type.setdefault((row["provider"], row["instance_type"]), []).append(row)
    for group in by_type.values():
        prices = [float(r["on_demand"]) for r in group]
        if len(group) > 1 and max(prices) > 2 * min(prices):
            for row in group:
                row["notes"] = "; ".join(x for x in (row["notes"], OUTLIER_NOTE) if x)


def render(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m providers.prices.build_catalog PATH/TO/gpu_prices.csv",
              file=sys.stderr)
        return 2
    text = Path(args[0]).read_text(encoding="utf-8")
    CATALOG_PATH.parent.mkdir(parents=True, exist_ok=True)
    CATALOG_PATH.write_text(render(normalise(text)), encoding="utf-8")
    print(f"wrote {CATALOG_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
