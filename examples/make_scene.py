"""Generate tiny, deterministic test scenes for the farm (runs INSIDE Blender).

    blender -b --factory-startup --python examples/make_scene.py -- <kind> <out_dir>
        [--frames N] [--res PX] [--samples N] [--denoise]

Kinds:
  anim      <out_dir>/anim.blend: an animated cube over a ground plane, Cycles on the
            CPU, every frame visibly different.
  textured  <out_dir>/project/: shots/shot.blend showing an external image texture
            (textures/checker.png, path ``//../textures/checker.png``) and a collection
            LINKED from lib/props.blend; the packing tests use it.

Stdlib + bpy only, and only APIs that exist in Blender 3.4 through 4.x: tests and demos
run it with whatever Blender is installed. It must not import anything of blenderfarm.
Scenes are deterministic (fixed Cycles seed, no animated seed, no adaptive sampling),
so that two renders of a frame give the same pixels.
"""

import argparse
import math
import os
import struct
import sys
import zlib

import bpy

CHECKER_SIZE = 64
CHECKER_CELL = 8


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="make_scene.py", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("anim", "textured"))
    parser.add_argument("out_dir")
    parser.add_argument("--frames", type=int, default=None, help="last frame (first is 1)")
    parser.add_argument("--res", type=int, default=64, help="square resolution in pixels")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--denoise", action="store_true")
    return parser.parse_args(argv)


# --- building blocks -------------------------------------------------------------------


def empty_file():
    """Start from nothing, so the saved files hold only what we make (and stay small)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def setup_render(scene, *, res, samples, denoise, frames):
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = samples
    cycles.use_denoising = denoise
    cycles.seed = 0
    cycles.use_animated_seed = False
    # Adaptive sampling stops at noise thresholds; off, every render does the same work.
    if hasattr(cycles, "use_adaptive_sampling"):
        cycles.use_adaptive_sampling = False
    scene.render.resolution_x = res
    scene.render.resolution_y = res
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    scene.render.filepath = "//render/frame_"
    scene.frame_start = 1
    scene.frame_end = frames
    scene.frame_current = 1


def make_world(scene, color):
    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    background = world.node_tree.nodes.get("Background")
    if background is not None:
        background.inputs["Color"].default_value = (*color, 1.0)
        background.inputs["Strength"].default_value = 1.0
    scene.world = world


def mesh_object(name, verts, faces, collection):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], faces)
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    return obj


def cube(name, size, collection):
    h = size / 2
    verts = [(x, y, z) for x in (-h, h) for y in (-h, h) for z in (-h, h)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return mesh_object(name, verts, faces, collection)


def plane(name, size, collection):
    h = size / 2
    verts = [(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)]
    return mesh_object(name, verts, [(0, 1, 2, 3)], collection)


def principled(name, color):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes.get("Principled BSDF")
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    mat.diffuse_color = (*color, 1.0)
    return mat


def add_camera(scene, location, rotation, ortho_scale=None):
    cam_data = bpy.data.cameras.new("Camera")
    if ortho_scale is not None:
        cam_data.type = "ORTHO"
        cam_data.ortho_scale = ortho_scale
    cam = bpy.data.objects.new("Camera", cam_data)
    cam.location = location
    cam.rotation_euler = rotation
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def add_sun(scene, strength=3.0):
    light = bpy.data.lights.new("Sun", "SUN")
    light.energy = strength
    sun = bpy.data.objects.new("Sun", light)
    sun.rotation_euler = (math.radians(40), math.radians(20), math.radians(30))
    scene.collection.objects.link(sun)
    return sun


def save(path):
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # No 'file.blend1' backups next to the files we hand out.
    bpy.context.preferences.filepaths.save_version = 0
    # relative_remap keeps '//' paths pointing at the same files when the folder changes.
    bpy.ops.wm.save_as_mainfile(filepath=path, relative_remap=True)
    return path


# --- anim ------------------------------------------------------------------------------


def make_anim(out_dir, *, frames, res, samples, denoise):
    scene = empty_file()
    setup_render(scene, res=res, samples=samples, denoise=denoise, frames=frames)
    make_world(scene, (0.05, 0.05, 0.08))
    ground = plane("Ground", 12.0, scene.collection)
    ground.data.materials.append(principled("GroundMat", (0.6, 0.6, 0.6)))
    box = cube("Cube", 1.2, scene.collection)
    box.data.materials.append(principled("CubeMat", (0.8, 0.2, 0.1)))
    # One key per frame (not two end keys) so that every frame differs, even at the
    # ends where Bezier easing would otherwise slow the motion to nearly nothing.
    for frame in range(1, frames + 1):
        t = (frame - 1) / max(frames - 1, 1)
        box.location = (-1.5 + 3.0 * t, 0.0, 0.6 + 0.8 * math.sin(math.pi * t))
        box.rotation_euler = (0.0, 0.0, math.radians(90.0 * t))
        box.keyframe_insert("location", frame=frame)
        box.keyframe_insert("rotation_euler", frame=frame)
    add_camera(scene, (0.0, -8.0, 4.5), (math.atan2(8.0, 4.5), 0.0, 0.0))
    add_sun(scene)
    return save(os.path.join(out_dir, "anim.blend"))


# --- textured --------------------------------------------------------------------------


def checker_png(path, size=CHECKER_SIZE, cell=CHECKER_CELL):
    """Write an RGB checkerboard PNG with zlib + struct (no image library needed)."""
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter type 0 for this scanline
        for x in range(size):
            on = ((x // cell) + (y // cell)) % 2 == 0
            row += bytes((230, 200, 40) if on else (30, 60, 200))
        rows.append(bytes(row))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b"")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)


def make_library(path):
    """lib/props.blend: a collection 'Props' with one coloured box, to be linked."""
    scene = empty_file()
    props = bpy.data.collections.new("Props")
    scene.collection.children.link(props)
    box = cube("PropBox", 0.8, props)
    box.data.materials.append(principled("PropMat", (0.1, 0.8, 0.2)))
    box.location = (0.0, 0.0, 0.4)
    save(path)


def textured_material(image):
    mat = bpy.data.materials.new("CheckerMat")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Closest"
    coords = nodes.new("ShaderNodeTexCoord")
    links.new(coords.outputs["Generated"], tex.inputs["Vector"])
    # Emission shows the texture at full strength whatever the lighting does.
    emission = nodes.new("ShaderNodeEmission")
    links.new(tex.outputs["Color"], emission.inputs["Color"])
    output = nodes.get("Material Output")
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return mat


def make_textured(out_dir, *, frames, res, samples, denoise):
    project = os.path.join(os.path.abspath(out_dir), "project")
    checker_png(os.path.join(project, "textures", "checker.png"))
    make_library(os.path.join(project, "lib", "props.blend"))

    shot_path = os.path.join(project, "shots", "shot.blend")
    scene = empty_file()
    # Saved once, empty, so that '//' paths below have a folder to be relative to.
    save(shot_path)
    scene = bpy.context.scene
    setup_render(scene, res=res, samples=samples, denoise=denoise, frames=frames)
    make_world(scene, (0.02, 0.02, 0.02))

    image = bpy.data.images.load(os.path.join(project, "textures", "checker.png"))
    image.filepath = "//../textures/checker.png"
    ground = plane("Checker", 4.0, scene.collection)
    ground.data.materials.append(textured_material(image))

    lib_path = os.path.join(project, "lib", "props.blend")
    with bpy.data.libraries.load(lib_path, link=True, relative=True) as (_src, dst):
        dst.collections = ["Props"]
    instance = bpy.data.objects.new("PropsInstance", None)
    instance.instance_type = "COLLECTION"
    instance.instance_collection = dst.collections[0]
    instance.location = (0.9, 0.9, 0.0)
    scene.collection.objects.link(instance)

    add_camera(scene, (0.0, 0.0, 6.0), (0.0, 0.0, 0.0), ortho_scale=4.0)
    add_sun(scene)
    return save(shot_path)


def main():
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    args = parse_args(argv)
    opts = {"res": args.res, "samples": args.samples, "denoise": args.denoise}
    if args.kind == "anim":
        path = make_anim(args.out_dir, frames=args.frames or 12, **opts)
    else:
        path = make_textured(args.out_dir, frames=args.frames or 3, **opts)
    print(f"make_scene: wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        import traceback

        traceback.print_exc()
        # Blender swallows script errors and exits 0; a test must see the failure.
        sys.exit(1)
