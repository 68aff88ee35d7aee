#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <sys/xattr.h>
#include <sys/stat.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  if(argc<4){fprintf(stderr,"usage: lat getxattr|openclose|stat PATH N\n");return 2;}
  const char*m=argv[1],*p=argv[2]; long n=atol(argv[3]); char buf[64]; long errs=0;
  double t0=now();
  for(long i=0;i<n;i++){
    if(!strcmp(m,"getxattr")){ if(getxattr(p,"user.nonexistent",buf,sizeof buf)>=0 || errno!=ENODATA) errs++; }
    else if(!strcmp(m,"openclose")){ int fd=open(p,O_RDONLY); if(fd<0) errs++; else close(fd); }
    else { struct stat st; if(stat(p,&st)) errs++; }
  }
  double t=now()-t0;
  printf("%.3f\n", t*1e6/n);
  if(errs) fprintf(stderr,"errs=%ld\n",errs);
  return 0;
}
