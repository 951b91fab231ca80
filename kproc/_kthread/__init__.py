"""kthreads (kernel/kthread.c): ``kthreadd`` (the process that forks them),
``body`` (what a kthread runs, and the in-kthread API), ``create`` (the create
list and its hand-off), ``control`` (wake, bind, park, unpark, stop and the
accessors), ``affinity`` (masks and their re-application), ``mm`` (borrowed address spaces:
kthread_use_mm and the user copies), ``blkcg`` (kthread_associate_blkcg).  Each module says
whether it runs in the caller, in kthreadd or in the kthread."""
