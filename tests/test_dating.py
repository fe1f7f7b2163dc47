"""Date folders of platform paths (terrafs/tree/dating.py): pure logic, no mount."""
from __future__ import annotations

import pytest

from terrafs.tree.dating import date_folders, platform_date


@pytest.mark.parametrize("container, folder, expected", [
    ("/data/MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/01/01", "S2A_X_TOC_V210", ("/data/MTDA/TERRASCOPE_Sentinel2/TOC_V2", 3)),
    ("/data/MTDA/TERRASCOPE_Sentinel5P/L3_CO_TD_V1/2020/01", "S5P_OFFL_L3_CO_TD_20200101_V100",
     ("/data/MTDA/TERRASCOPE_Sentinel5P/L3_CO_TD_V1", 2)),
    ("/data/MTDA/AgERA5/2020", "20200101", ("/data/MTDA/AgERA5", 1)),
    # A year folder counts only with YYYYMMDD folders of that same year below it.
    ("/data/MTDA/AgERA5/2020", "20210101", ("/data/MTDA/AgERA5/2020", 0)),
    ("/data/MTDA/DEM/COPERNICUS-DEM-30", "Copernicus_DSM_COG_10_N50_00_E004_00_DEM",
     ("/data/MTDA/DEM/COPERNICUS-DEM-30", 0)),
    ("/data/MTDA/WORLDCOVER/ESA_WORLDCOVER_10M_2020_V100/MAP", "ESA_WorldCover_10m_2020_v100_N51E003_Map",
     ("/data/MTDA/WORLDCOVER/ESA_WORLDCOVER_10M_2020_V100/MAP", 0)),
    ("/data/MTDA/X/2020/13", "P", ("/data/MTDA/X/2020/13", 0)),  # no month 13
])
def test_date_folders(container, folder, expected):
    assert date_folders(container, folder) == expected


def test_platform_date_from_platform_paths_and_download_urls():
    coh = "S1A_S1B_Coherence_20200103T172616_20200109T172534_ASC_161_V100"
    local = f"/data/MTDA/TERRASCOPE_Sentinel1/SLC_COHERENCE/2020/01/09/{coh}/{coh}_VV.tif"
    url = f"http://127.0.0.1:1/download/Sentinel1/SLC_COHERENCE/2020/01/09/{coh}/{coh}_VV.tif"
    assert platform_date(3, coh, [local]) == (2020, 1, 9), "the folder's date, not the acquisition's"
    assert platform_date(3, coh, [None, url]) == (2020, 1, 9)
    s5p = "S5P_OFFL_L3_CO_TD_20200201_V100"
    assert platform_date(2, s5p, [f"/data/MTDA/TERRASCOPE_Sentinel5P/L3_CO_TD_V1/2020/02/{s5p}/x.tif"]) == (2020, 2, 0)
    assert platform_date(1, "20210615", ["/data/MTDA/AgERA5/2021/20210615/AgERA5_x_20210615.tif"]) == (2021, 6, 15)
    lai = "S2A_20200101T105431_31UFS_LAI_V200"
    assert platform_date(3, lai, [f"/data/MTDA/TERRASCOPE_Sentinel2/LAI_V2/2020/01/01/{lai}/10M/x.tif"]) == (2020, 1, 1)
    assert platform_date(3, "P", ["/data/MTDA/X/P/x.tif", "https://h/wms/v2?x=1"]) is None
