"""Physical constants the book uses, each defined once.

Book: {ref}`sec-atmosphere`
"""

from __future__ import annotations

__all__ = ["C_KMS"]

#: Speed of light in vacuum (km/s), exact by the SI definition of the metre.
C_KMS = 299_792.458
