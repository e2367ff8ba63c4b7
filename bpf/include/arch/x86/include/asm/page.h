/* The loader passes the running page size with -DPAGE_SIZE; 4 KiB otherwise. */
#ifndef PAGE_SIZE
#define PAGE_SIZE 4096UL
#endif
