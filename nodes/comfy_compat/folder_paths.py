"""`folder_paths`: ComfyUI's model-folder and input/output/temp-folder functions over this engine's folders, with
the same containment as the engine's own loaders (a name never resolves outside its folder)."""

from __future__ import annotations

import os
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..imageio import UnsafePathError, folder_for, resolve_inside, save_target, split_annotation
from ..models.errors import ModelNotFound, UnsafeModelPath
from ..models.folders import FOLDER_ALIASES, MODEL_EXTENSIONS
from . import active_services, make_module

SUPPORTED_PT_EXTENSIONS = frozenset(MODEL_EXTENSIONS)


class FolderNamesAndPaths(Mapping):
    """ComfyUI's `folder_names_and_paths` as a live view: folder name -> ([search paths], {extensions}).
    Assigning `view[name] = ([paths], extensions)` adds those search paths (extensions of a new folder are the
    model extensions); deleting is refused."""

    def __init__(self, services: Any) -> None:
        self._services = services

    def _folders(self) -> Any:
        return active_services(self._services).folders

    def __getitem__(self, name: str) -> tuple[list[str], set[str]]:
        folders = self._folders()
        key = folders.folder_key(name)
        return [str(p) for p in folders.paths(key)], set(folders._extensions[key])

    def __iter__(self) -> Iterator[str]:
        return iter([*self._folders().folders(), *FOLDER_ALIASES])

    def __len__(self) -> int:
        return len(self._folders().folders()) + len(FOLDER_ALIASES)

    def __setitem__(self, name: str, value: Any) -> None:
        paths = value[0] if isinstance(value, tuple) else value
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
            self._folders().add_path(name, path)

    def __delitem__(self, name: str) -> None:
        raise TypeError("folder_paths.folder_names_and_paths: removing a model folder is not supported")


def build(bound: Any) -> types.ModuleType:
    def services() -> Any:
        return active_services(bound)

    def get_folder_paths(folder_name: str) -> list[str]:
        return [str(p) for p in services().folders.paths(folder_name)]

    def get_filename_list(folder_name: str) -> list[str]:
        return services().folders.list(folder_name)

    def get_full_path(folder_name: str, filename: str) -> str | None:
        try:
            return str(services().folders.resolve(folder_name, filename))
        except (ModelNotFound, UnsafeModelPath):
            return None

    def get_full_path_or_raise(folder_name: str, filename: str) -> str:
        path = get_full_path(folder_name, filename)
        if path is None:
            raise FileNotFoundError(f"{filename!r} is not a file of model folder {folder_name!r} (searched: "
                                    f"{', '.join(get_folder_paths(folder_name)) or 'no folders'})")
        return path

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        services().folders.add_path(folder_name, full_folder_path, first=is_default)

    def get_input_directory() -> str:
        return str(services().input_dir)

    def get_output_directory() -> str:
        return str(services().output_dir)

    def get_temp_directory() -> str:
        return str(services().temp_dir)

    def get_user_directory() -> str:
        return str(services().config.user_dir)

    def get_directory_by_type(type_name: str) -> str | None:
        return str(folder_for(services(), type_name)) if type_name in ("input", "output", "temp") else None

    def annotated_filepath(name: str) -> tuple[str, str | None]:
        plain, kind = split_annotation(name)
        return plain, get_directory_by_type(kind) if kind else None

    def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
        """The path of `name` (`x.png`, `sub/x.png [output]`…) inside its folder; raises on a path escape."""
        plain, base = annotated_filepath(name)
        root = base or default_dir or get_input_directory()
        return str(resolve_inside(root, plain, "file name"))

    def exists_annotated_filepath(name: str) -> bool:
        try:
            return os.path.exists(get_annotated_filepath(name))
        except UnsafePathError:
            return False

    def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                            image_height: int = 0) -> tuple[str, str, int, str, str]:
        """(folder, filename, first free counter, subfolder, prefix with %width%/%height%/date filled in)."""
        target = save_target(output_dir, filename_prefix, int(image_width), int(image_height))
        prefix = target.filename if not target.subfolder else f"{target.subfolder}/{target.filename}"
        return str(target.folder), target.filename, target.counter, target.subfolder, prefix

    def filter_files_extensions(files: Any, extensions: Any) -> list[str]:
        wanted = {e.lower() for e in extensions}
        return sorted(f for f in files if not wanted or os.path.splitext(f)[1].lower() in wanted)

    functions = (get_folder_paths, get_filename_list, get_full_path, get_full_path_or_raise, add_model_folder_path,
                 get_input_directory, get_output_directory, get_temp_directory, get_user_directory,
                 get_directory_by_type, annotated_filepath, get_annotated_filepath, exists_annotated_filepath,
                 get_save_image_path, filter_files_extensions)
    namespace: dict[str, Any] = {f.__name__: f for f in functions}
    namespace.update(supported_pt_extensions=set(SUPPORTED_PT_EXTENSIONS),
                     folder_names_and_paths=FolderNamesAndPaths(bound), __graphengine_services__=bound)
    dynamic = {"models_dir": lambda: str(services().folders.models_dir),
               "base_path": lambda: str(Path(services().config.base_dir)),
               "output_directory": get_output_directory, "input_directory": get_input_directory,
               "temp_directory": get_temp_directory, "user_directory": get_user_directory}
    return make_module("folder_paths", __doc__, namespace, dynamic)
