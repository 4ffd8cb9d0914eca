import json, sys
import numpy as np
from fastnst import data, discs, images, modelfile, stylize
shared = data.shared_data()
held = data.FolderSource(shared / "train", holdout=10).heldout
content = sorted((shared / "content").glob("*.jpg"))
sets = {"held_out_10": held, "content_3": content}
rows = {}
for name in ("starry_night", "the_scream"):
    m = modelfile.load_model(name)
    for set_name, files in sets.items():
        areas, counts = [], []
        for f in files:
            photo = images.resize_max_side(images.load_image(f), 512)
            out = np.asarray(stylize.apply(m, photo))
            d = discs.disc_area(out, photo)
            areas.append(d["area"]); counts.append(d["count"])
            if name == "starry_night":  # the photos against themselves: must be 0
                assert discs.disc_area(photo, photo)["area"] == 0
        rows[f"{name}/{set_name}"] = {"mean_area": float(np.mean(areas)), "max_area": float(np.max(areas)),
                                      "images_with_discs": int(sum(c > 0 for c in counts)), "n": len(files),
                                      "areas": [round(a, 5) for a in areas]}
        print(name, set_name, rows[f"{name}/{set_name}"], flush=True)
# the gallery photo
photo = images.resize_max_side(images.load_image(data.sample_photo("chelsea.png")), 768)
for name in ("starry_night", "the_scream"):
    out = np.asarray(stylize.apply(modelfile.load_model(name), photo))
    rows[f"{name}/chelsea"] = discs.disc_area(out, photo)

    print(name, "chelsea", rows[f"{name}/chelsea"])
json.dump(rows, open(sys.argv[1], "w"), indent=1)
