@echo off
rem Start the server from .venv (created on first use). Settings come from DD_* variables,
rem e.g.  set DD_MODELS_DIR=D:\models  - see README. Default: 127.0.0.1:5000.
setlocal
cd /d "%~dp0"

if not exist ".venv\Scripts\python.exe" (
    call start_venv_setup.bat
    if errorlevel 1 exit /b 1
)
call ".venv\Scripts\activate.bat"
python -m api serve %*
exit /b %errorlevel%
