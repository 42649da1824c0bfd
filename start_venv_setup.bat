@echo off
rem Create .venv with Python 3.11 and install requirements-dev.txt into it.
rem With an NVIDIA GPU, install the CUDA build of torch into .venv first (see README, "Windows").
setlocal
cd /d "%~dp0"

if not exist ".venv\Scripts\python.exe" (
    echo start_venv_setup: creating .venv with Python 3.11
    py -3.11 -m venv .venv
    if errorlevel 1 goto :no_python
)

".venv\Scripts\python.exe" -m pip install --disable-pip-version-check --upgrade pip
if errorlevel 1 exit /b 1
".venv\Scripts\python.exe" -m pip install --disable-pip-version-check -r requirements-dev.txt
if errorlevel 1 exit /b 1
echo start_venv_setup: done
exit /b 0

:no_python
echo start_venv_setup: could not create .venv - install Python 3.11 from python.org with the "py" launcher
exit /b 1
