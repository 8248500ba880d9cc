import os

from django.conf import settings
from django.http import FileResponse, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def hello(request):
    return HttpResponse(f"hello from django, script={request.META['SCRIPT_NAME']!r} path={request.path}")


@csrf_exempt
def submit(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    return JsonResponse({"name": request.POST.get("name"), "count": len(request.POST)})


def download(request):
    return FileResponse(open(os.path.join(settings.FILES_DIR, "settings.py"), "rb"), as_attachment=True,
                        filename="settings.py")


urlpatterns = [
    path("hello/", hello),
    path("submit/", submit),
    path("download/", download),
]
