"""Only what pyproject.toml cannot say: install ``tickcall-gym.pth`` into site-packages (see
tickcall/gym_hook.py: gymnasium 1.x has no plugin entry points), for wheels and editable installs."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).resolve().parent / "tickcall-gym.pth"


class BuildPyWithPth(build_py):
    """Wheels: the .pth goes to the root of the wheel, i.e. site-packages."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH.name)]


class EditableWheelWithPth(editable_wheel):
    """Editable installs: setuptools writes the root of the editable wheel from its ``unpacked`` folder,
    which ``_install_namespaces`` fills (setuptools >= 64); the .pth joins it there."""

    def _install_namespaces(self, installation_dir, pth_prefix):  # type: ignore[no-untyped-def]
        super()._install_namespaces(installation_dir, pth_prefix)
        Path(installation_dir, PTH.name).write_text(PTH.read_text())


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
