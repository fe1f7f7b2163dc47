"""Load one raster in headless QGIS, describe it as JSON and render it to a PNG.

Run with the SYSTEM python (Debian's python3-qgis), not the project's venv:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_probe.py <raster> <out.png>

It prints one JSON object on stdout: valid, extent, crs, size, stats, render.
It is a probe for tests/test_clients_qgis.py; it imports nothing from terrafs
and must not: the system python does not have the project's packages.
"""
from __future__ import annotations

import json
import sys

RENDER_SIZE = 256  # pixels on each side of the rendered map image


def describe(path: str, png: str) -> dict:
    from qgis.core import (QgsMapRendererSequentialJob, QgsMapSettings, QgsRasterBandStats,
                           QgsRasterLayer)
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    layer = QgsRasterLayer(path, "band", "gdal")
    if not layer.isValid():
        return {"valid": False, "error": layer.error().summary()}
    extent = layer.extent()
    provider = layer.dataProvider()
    stats = provider.bandStatistics(1, QgsRasterBandStats.All, extent, 0)
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(RENDER_SIZE, RENDER_SIZE))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    saved = image.save(png, "PNG")
    return {
        "valid": True,
        "extent": [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()],
        "crs": layer.crs().authid(),
        "size": [layer.width(), layer.height()],
        "bands": layer.bandCount(),
        "stats": {
            "min": stats.minimumValue, "max": stats.maximumValue, "mean": stats.mean,
            "stddev": stats.stdDev, "sum": stats.sum, "count": stats.elementCount,
        },
        "render": {"width": image.width(), "height": image.height(), "saved": bool(saved),
                   "errors": [e.message for e in job.errors()]},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: qgis_probe.py <raster> <out.png>\n")
        return 2
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        result = describe(argv[1], argv[2])
    finally:
        app.exitQgis()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result.get("valid") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
