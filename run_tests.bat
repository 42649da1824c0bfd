@echo off
rem Run the test suite from .venv (created on first use). Arguments go to pytest,
rem e.g.  run_tests.bat -k inpaint
setlocal
cd /d "%~dp0"

if not exist ".venv\Scripts\python.exe" (
    call start_venv_setup.bat
    if errorlevel 1 exit /b 1
)
cd api
"..\.venv\Scripts\python.exe" -m pytest %*
exit /b %errorlevel%
